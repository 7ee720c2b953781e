"""Attention transfer (activation-based).

Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer", ICLR 2017 (arXiv:1612.03928). The
spatial attention map of a stage is the channel mean of ``|f|^p`` (p = 2), flattened and
L2-normalised; the student's maps are pulled towards the teacher's at matching stages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from kdflow.errors import ParamsError
from kdflow.losses import LOSSES
from kdflow.losses._base import DistillLoss, ce, layer_index
from kdflow.outputs import Outputs


class ATOptions(BaseModel):
    """Options of ``distill.methods.at``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(
        100.0, ge=0.0, allow_inf_nan=False
    )  # beta in the paper (1000); 100 on val
    # Exponent of |f|; p < 1 would give infinite gradients at exact zeros (ReLU outputs).
    p: float = Field(2.0, ge=1.0, allow_inf_nan=False)
    # Which features to pair; None = every aligned stage pair (see AT). An entry is an index
    # into those pairs, a module name in both networks (layer3), or [student, teacher] layers
    # (each a stage index or a module name: [layer3, blocks.4]).
    layers: list[int | str | tuple[int | str, int | str]] | None = Field(None, min_length=1)
    ce_weight: float = Field(1.0, ge=0.0, allow_inf_nan=False)


def attention_map(f: Tensor, p: float) -> Tensor:
    """(N, C, H, W) -> (N, H*W): channel mean of ``|f|^p``, L2-normalised per sample."""
    f = f.to(torch.promote_types(f.dtype, torch.float32))
    return F.normalize(f.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def pair_stages(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Pair the last ``min(n_student, n_teacher)`` stages of each network, in order."""
    m = min(n_student, n_teacher)
    return [(n_student - m + i, n_teacher - m + i) for i in range(m)]


class AT(DistillLoss):
    """``ce_weight*CE + weight * mean over pairs of mean((at(s) - at(t))^2)``.

    Where the teacher "looks" (the spatial distribution of its activation energy) transfers
    across architectures of different width, since the map has no channel dimension.

    Choices: stages are paired from the output end (the last ``min`` stages of each network,
    in order) and ``layers`` indexes those pairs, so with equal stage counts it is the list
    of stage indices; names and [student, teacher] entries pair exactly those layers
    (``kdflow.models.resolve_layers`` turns them into feature indices). The per-pair term is
    the RepDistiller form, the mean over batch and positions of the squared difference of
    the normalised maps; pairs are *averaged* (not
    summed, as RepDistiller does) so that ``weight`` does not depend on how many stages are
    used; the published ``weight`` of 1000 goes with this per-position mean. When spatial
    sizes differ, the larger feature map is adaptive-average-pooled to the smaller size before
    its attention map is computed.
    """

    needs_features = True

    def __init__(
        self,
        pairs: list[tuple[int, int]],
        weight: float = 1000.0,
        p: float = 2.0,
        ce_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not pairs:
            raise ValueError("attention transfer needs at least one pair of stages")
        self.pairs = list(pairs)
        self.weight = float(weight)
        self.p = float(p)
        self.ce_weight = float(ce_weight)

    def pair_loss(self, s: Tensor, t: Tensor) -> Tensor:
        hs, ht = s.shape[2:], t.shape[2:]
        if tuple(hs) != tuple(ht):
            if hs[0] * hs[1] > ht[0] * ht[1]:
                s = F.adaptive_avg_pool2d(s, tuple(ht))
            else:
                t = F.adaptive_avg_pool2d(t, tuple(hs))
        return (attention_map(s, self.p) - attention_map(t, self.p)).pow(2).mean()

    def forward(
        self, student: Outputs, teacher: Outputs, target: Tensor, epoch: int = 0
    ) -> dict[str, Tensor]:
        hard = ce(student.logits, target)
        terms = [self.pair_loss(student.features[i], teacher.features[j]) for i, j in self.pairs]
        at = torch.stack(terms).mean()
        return {
            "loss": self.ce_weight * hard + self.weight * at,
            "ce": hard.detach(),
            "at": at.detach(),
        }


@LOSSES.register("at", schema=ATOptions)
def build(
    o: ATOptions,
    student_dims: list[tuple[int, ...]],
    teacher_dims: list[tuple[int, ...]],
) -> AT:
    pairs = pair_stages(len(student_dims), len(teacher_dims))
    if o.layers is not None:
        chosen = []
        for n, entry in enumerate(o.layers):
            if isinstance(entry, str):
                entry = (entry, entry)
            if not isinstance(entry, int):  # explicit [student, teacher] layers
                chosen.append(tuple(
                    layer_index(entry[i], dims, f"distill.methods.at.layers[{n}][{i}]", who)
                    for i, (dims, who) in enumerate(((student_dims, "student"),
                                                     (teacher_dims, "teacher")))
                ))  # fmt: skip
                continue
            if not -len(pairs) <= entry < len(pairs):
                raise ParamsError(
                    f"params.yaml: distill.methods.at.layers contains {entry}, out of range for "
                    f"{len(pairs)} paired stage(s)"
                )
            chosen.append(pairs[entry])
        pairs = chosen
    for who, dims, k in (("student", student_dims, 0), ("teacher", teacher_dims, 1)):
        bad = [tuple(dims[p[k]]) for p in pairs if len(dims[p[k]]) != 3]
        if not pairs or bad:
            raise ParamsError(
                f"attention transfer needs (C, H, W) stage features; the {who} has {bad or 'none'}"
            )
    return AT(pairs, o.weight, o.p, o.ce_weight)
