"""FitNets: hints for thin deep nets.

Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep Nets",
ICLR 2015 (arXiv:1412.6550). A regressor maps the student's hint layer to the teacher's
guided layer and the two are matched with an L2 loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from kdflow.errors import ParamsError
from kdflow.losses import LOSSES
from kdflow.losses._base import DistillLoss, ce, layer_index
from kdflow.outputs import Outputs


class FitNetOptions(BaseModel):
    """Options of ``distill.methods.fitnet``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(1.0, ge=0.0, allow_inf_nan=False)  # weight of the hint loss
    # the hint / guided layer: a stage index (-1: the last) or a module name (layer3, blocks.4)
    student_layer: int | str = -1
    teacher_layer: int | str = -1
    ce_weight: float = Field(1.0, ge=0.0, allow_inf_nan=False)


def _map(dims: list[tuple[int, ...]], layer: int | str, who: str) -> tuple[int, int, int, int]:
    """The layer's index and its (C, H, W) shape."""
    i = layer_index(layer, dims, f"distill.methods.fitnet.{who}_layer", who)
    shape = tuple(dims[i])
    if len(shape) != 3:
        raise ParamsError(
            f"fitnet needs (C, H, W) feature maps; the {who}'s layer {layer} has shape {shape}"
        )
    return (i, *shape)  # type: ignore[return-value]


class FitNet(DistillLoss):
    """``ce_weight*CE + weight * MSE(BN(conv1x1(pool(s_feat))), t_feat)``.

    The thinner student cannot reproduce the teacher's channels directly, so a learned 1x1
    convolution (+ BatchNorm, whose scale lets the target's magnitude be matched) regresses the
    teacher's map from the student's; its parameters belong to this module and are trained
    with the student. The layers are indices into ``Outputs.features`` (stage indices, or
    module names resolved to taps by ``kdflow.models.resolve_layers``). If the spatial sizes
    differ the student map is adaptive-average-pooled to the teacher's size first.
    """

    needs_features = True

    def __init__(
        self,
        student_shape: tuple[int, int, int],
        teacher_shape: tuple[int, int, int],
        student_layer: int = -1,  # indices into ``Outputs.features``
        teacher_layer: int = -1,
        weight: float = 1.0,
        ce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.student_layer = int(student_layer)
        self.teacher_layer = int(teacher_layer)
        self.weight = float(weight)
        self.ce_weight = float(ce_weight)
        self.regressor = nn.Sequential(
            nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1, bias=False),
            nn.BatchNorm2d(teacher_shape[0]),
        )

    def forward(
        self, student: Outputs, teacher: Outputs, target: Tensor, epoch: int = 0
    ) -> dict[str, Tensor]:
        hard = ce(student.logits, target)
        s = student.features[self.student_layer]
        t = teacher.features[self.teacher_layer]
        if tuple(s.shape[2:]) != tuple(t.shape[2:]):
            s = F.adaptive_avg_pool2d(s, tuple(t.shape[2:]))
        r = self.regressor(s)
        dtype = torch.promote_types(r.dtype, torch.float32)
        hint = F.mse_loss(r.to(dtype), t.to(dtype))
        return {
            "loss": self.ce_weight * hard + self.weight * hint,
            "ce": hard.detach(),
            "hint": hint.detach(),
        }


@LOSSES.register("fitnet", schema=FitNetOptions)
def build(
    o: FitNetOptions,
    student_dims: list[tuple[int, ...]],
    teacher_dims: list[tuple[int, ...]],
) -> FitNet:
    s_layer, *s_shape = _map(student_dims, o.student_layer, "student")
    t_layer, *t_shape = _map(teacher_dims, o.teacher_layer, "teacher")
    return FitNet(tuple(s_shape), tuple(t_shape), s_layer, t_layer, o.weight, o.ce_weight)
