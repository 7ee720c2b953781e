"""Shared pieces of the distillation losses."""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from kdflow.outputs import Outputs


class DistillLoss(nn.Module):
    """Base: subclasses set ``needs_features`` when they read intermediate features.

    Methods that need only teacher logits can use the teacher-output cache.
    """

    needs_features: ClassVar[bool] = False

    def forward(  # pragma: no cover - interface
        self, student: Outputs, teacher: Outputs, target: Tensor, epoch: int = 0
    ) -> dict[str, Tensor]:
        raise NotImplementedError


def kl_div_t(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(t/T) || softmax(s/T)) averaged over the batch (not over classes)."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def ce(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits, target)
