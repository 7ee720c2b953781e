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


def ce(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits, target)
