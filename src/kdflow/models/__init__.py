"""Models registry: every architecture is built as a ``Net`` (stem, stages, pool, head).

Callers use ``forward_all`` for features, ``embed`` for the pooled backbone output and
``head`` for the classifier, without knowing the class.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def build_for_task(spec: Mapping[str, Any], task: Any, num_classes: int | None = None) -> nn.Module:
    """The architecture a spec names (``model_spec``) for a task's input and classes."""
    n = task.num_classes if num_classes is None else num_classes
    return build_model(
        spec["arch"], n, task.in_channels, task.image_size, spec["width"], spec["depth"]
    )


def model_spec(cfg: Any) -> dict[str, Any]:
    """The architecture fields that go into a checkpoint (to rebuild it later)."""
    return {"arch": cfg.arch, "width": cfg.width, "depth": cfg.depth}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
