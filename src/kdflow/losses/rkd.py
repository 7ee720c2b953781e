"""Relational knowledge distillation (RKD).

Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019 (arXiv:1904.05068).
Distance-wise and angle-wise potentials on the pooled embeddings of a batch, each compared
with the Huber (smooth-L1) loss; the paper weights them 25 and 50.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from kdflow.losses import LOSSES
from kdflow.losses._base import DistillLoss, ce, layer_index
from kdflow.outputs import Outputs

_EPS = 1e-12  # on squared lengths: below it a difference vector counts as zero


class RKDOptions(BaseModel):
    """Options of ``distill.methods.rkd``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    distance_weight: float = Field(25.0, ge=0.0, allow_inf_nan=False)
    angle_weight: float = Field(50.0, ge=0.0, allow_inf_nan=False)
    ce_weight: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    # None: the pooled embeddings (the paper); else a layer whose output is mean-pooled: a
    # stage index or a module name (layer3, blocks.4)
    student_layer: int | str | None = None
    teacher_layer: int | str | None = None


def _differences(e: Tensor) -> tuple[Tensor, Tensor]:
    """``diff[i, j] = e[j] - e[i]`` (N, N, D) and its squared lengths (N, N)."""
    diff = e.unsqueeze(0) - e.unsqueeze(1)
    return diff, diff.pow(2).sum(dim=-1)


def _safe_sqrt(sq: Tensor) -> Tensor:
    """sqrt with value and gradient 0 (not inf/NaN) where ``sq`` is (near) zero."""
    return torch.where(sq > _EPS, sq.clamp_min(_EPS).sqrt(), torch.zeros_like(sq))


def distance_potential(e: Tensor) -> Tensor:
    """Pairwise distances (N, N) divided by their mean over the nonzero entries."""
    _, sq = _differences(e)
    d = _safe_sqrt(sq)
    nonzero = (d > 0).sum().clamp_min(1)
    mean = (d.sum() / nonzero).clamp_min(_EPS)
    return d / mean


def angle_potential(e: Tensor) -> Tensor:
    """``cos`` of the angle at ``e[i]`` between ``e[j]`` and ``e[k]``, shape (N, N, N).

    Degenerate triplets (``j`` or ``k`` equal to ``i``, or coinciding embeddings) give 0.
    """
    diff, sq = _differences(e)
    length = _safe_sqrt(sq).unsqueeze(-1)
    unit = torch.where(length > 0, diff / length.clamp_min(_EPS**0.5), torch.zeros_like(diff))
    return torch.bmm(unit, unit.transpose(1, 2))


def pooled(f: Tensor) -> Tensor:
    """(N, C, H, W) maps and (N, L, D) tokens -> (N, C) / (N, D) by their mean; (N, D) as is."""
    if f.dim() == 4:
        return f.mean(dim=(2, 3))
    return f.mean(dim=1) if f.dim() == 3 else f.flatten(1)


class RKD(DistillLoss):
    """``ce_weight*CE + distance_weight*Huber(psi_D) + angle_weight*Huber(psi_A)``.

    Instead of matching individual outputs, the student copies the *structure* of the
    teacher's embedding space (relative distances and angles between samples of a batch),
    which does not require equal embedding sizes and tolerates a weaker student. Both Huber
    terms are averaged over all entries (diagonal and degenerate triplets included, where
    both sides are 0). ``student_layer`` / ``teacher_layer`` (indices into ``features``) use
    that layer's mean-pooled output instead of the embedding. Computed in float32 even under
    autocast: the distance normalisation and the triplet products lose too much precision in
    half.
    """

    needs_features = True

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        ce_weight: float = 1.0,
        student_layer: int | None = None,
        teacher_layer: int | None = None,
    ) -> None:
        super().__init__()
        self.student_layer = student_layer
        self.teacher_layer = teacher_layer
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        self.ce_weight = float(ce_weight)

    @staticmethod
    def _embedding(out: Outputs, layer: int | None) -> Tensor:
        if layer is not None:
            return pooled(out.features[layer])
        if out.embedding is None:
            raise ValueError("rkd needs the pooled embeddings of student and teacher")
        return out.embedding

    def forward(
        self, student: Outputs, teacher: Outputs, target: Tensor, epoch: int = 0
    ) -> dict[str, Tensor]:
        hard = ce(student.logits, target)
        e_s, e_t = (
            self._embedding(student, self.student_layer),
            self._embedding(teacher, self.teacher_layer),
        )
        dtype = torch.promote_types(e_s.dtype, torch.float32)
        with torch.autocast(device_type=e_s.device.type, enabled=False):
            e_s = e_s.to(dtype).flatten(1)
            e_t = e_t.to(dtype).flatten(1)
            with torch.no_grad():
                d_t = distance_potential(e_t)
                a_t = angle_potential(e_t)
            dist = F.smooth_l1_loss(distance_potential(e_s), d_t)
            angle = F.smooth_l1_loss(angle_potential(e_s), a_t)
        return {
            "loss": self.ce_weight * hard + self.distance_weight * dist + self.angle_weight * angle,
            "ce": hard.detach(),
            "distance": dist.detach(),
            "angle": angle.detach(),
        }


@LOSSES.register("rkd", schema=RKDOptions)
def build(
    o: RKDOptions,
    student_dims: list[tuple[int, ...]],
    teacher_dims: list[tuple[int, ...]],
) -> RKD:
    s_layer, t_layer = (
        None if layer is None else layer_index(layer, dims, f"distill.methods.rkd.{who}_layer", who)
        for layer, dims, who in ((o.student_layer, student_dims, "student"),
                                 (o.teacher_layer, teacher_dims, "teacher"))
    )  # fmt: skip
    return RKD(o.distance_weight, o.angle_weight, o.ce_weight, s_layer, t_layer)
