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
    """Cross-entropy over the labelled images of the batch (target -1: no label).

    With ``data.label_fraction`` < 1 the teacher's soft targets cover every image and the
    labels only some; a batch without any label contributes no hard-label loss.
    """
    labelled = target >= 0
    if bool(labelled.all()):
        return F.cross_entropy(logits, target)
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labelled], target[labelled])
