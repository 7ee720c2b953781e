"""Models registry: every architecture is built as a ``Net`` (stem, stages, pool, head).

Callers use ``forward_all`` for features, ``embed`` for the pooled backbone output and
``head`` for the classifier, without knowing the class.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdflow.registry import Registry

MODELS: Registry = Registry("architecture", "kdflow.models")


def build_model(
    arch: str, num_classes: int, in_channels: int, image_size: int, width: int = 32, depth: int = 3
) -> nn.Module:
    """Build a registered architecture for this input shape and class count."""
    return MODELS.get(arch)(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        width=width,
        depth=depth,
    )


def model_spec(cfg: Any) -> dict[str, Any]:
    """The architecture fields that go into a checkpoint (to rebuild it later)."""
    return {"arch": cfg.arch, "width": cfg.width, "depth": cfg.depth}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
