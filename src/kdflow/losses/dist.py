"""DIST: knowledge distillation from a stronger teacher.

Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022
(arXiv:2205.10536). Inter-class relation: Pearson correlation of each sample's class
probabilities; intra-class relation: Pearson correlation of each class's probabilities across
the batch. The paper uses beta = gamma = 1 (gamma = 2 on ImageNet) and tau = 1 (4 on CIFAR).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from kdflow.losses import LOSSES
from kdflow.losses._base import DistillLoss, ce
from kdflow.outputs import Outputs

_EPS = 1e-8


class DISTOptions(BaseModel):
    """Options of ``distill.methods.dist``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(4.0, gt=0.0, le=1000.0)  # chosen on validation (docs/sweeps.md)
    beta: float = Field(1.0, ge=0.0, allow_inf_nan=False)  # inter-class relation weight
    gamma: float = Field(1.0, ge=0.0, allow_inf_nan=False)  # intra-class relation weight
    ce_weight: float = Field(1.0, ge=0.0, allow_inf_nan=False)


def _row_pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``, shape (N,).

    The norms are floored at a tiny epsilon so that a constant row gives correlation 0 with
    finite gradients instead of 0/0.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    na = a.pow(2).sum(dim=1).clamp_min(_EPS**2).sqrt()
    nb = b.pow(2).sum(dim=1).clamp_min(_EPS**2).sqrt()
    return (a * b).sum(dim=1) / (na * nb)


class DIST(DistillLoss):
    """``ce_weight*CE + beta*inter + gamma*intra`` with ``1 - mean Pearson`` relations.

    Matching probabilities exactly (KL) is too strict when the teacher is much stronger than
    the student; DIST only asks the student to preserve the teacher's *relations* (rankings
    and relative scales), which Pearson correlation measures invariantly to shift and scale.
    Both terms are multiplied by tau^2 as in the paper's code.
    """

    def __init__(
        self, temperature: float, beta: float = 1.0, gamma: float = 1.0, ce_weight: float = 1.0
    ) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.ce_weight = float(ce_weight)

    def forward(
        self, student: Outputs, teacher: Outputs, target: Tensor, epoch: int = 0
    ) -> dict[str, Tensor]:
        hard = ce(student.logits, target)
        s = student.logits
        s = s.to(torch.promote_types(s.dtype, torch.float32))
        t = teacher.logits.to(s.dtype)
        p_s = torch.softmax(s / self.temperature, dim=1)
        p_t = torch.softmax(t / self.temperature, dim=1)
        t2 = self.temperature**2
        inter = (1.0 - _row_pearson(p_s, p_t).mean()) * t2
        intra = (1.0 - _row_pearson(p_s.t(), p_t.t()).mean()) * t2
        return {
            "loss": self.ce_weight * hard + self.beta * inter + self.gamma * intra,
            "ce": hard.detach(),
            "inter": inter.detach(),
            "intra": intra.detach(),
        }


@LOSSES.register("dist", schema=DISTOptions)
def build(
    o: DISTOptions,
    student_dims: list[tuple[int, ...]],
    teacher_dims: list[tuple[int, ...]],
) -> DIST:
    return DIST(o.temperature, o.beta, o.gamma, o.ce_weight)
