"""What a model forward hands to the losses: logits, stage features and the pooled embedding."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class Outputs:
    logits: Tensor
    features: list[Tensor] = field(default_factory=list)  # one map per stage, (N, C, H, W)
    embedding: Tensor | None = None  # pooled backbone output, (N, D)
    old_logits: Tensor | None = None  # transfer: the old task's head on the same input
