"""The one model interface every architecture implements."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdflow.models._features import Features, capture, collect


class Net(Features, nn.Module):
    """stem -> stages (features) -> global pool (embedding) -> head (logits).

    Keeping the head apart from the backbone is what transfer strategies need; exposing each
    stage's output (and any tapped module's, by name) is what feature distillation needs.
    """

    def __init__(self, stem: nn.Module, stages: list[nn.Module], feat_dim: int, num_classes: int):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = feat_dim
        self.head = nn.Linear(feat_dim, num_classes)
        self._taps: list[str] = []

    def stage_names(self) -> list[str]:
        return [f"stages.{i}" for i in range(len(self.stages))]

    def backbone(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        feats = []
        with capture(self, self._taps) as tapped:
            x = self.stem(x)
            for stage in self.stages:
                x = stage(x)
                feats.append(x)
            emb = torch.flatten(self.pool(x), 1)
        return feats + collect(tapped, self._taps), emb

    def embed(self, x: Tensor) -> Tensor:
        return self.backbone(x)[1]
