"""Models registry: every architecture is built as a ``Net`` (stem, stages, pool, head), or as an
``Adapted`` network (``timm:<name>``, ``torchvision:<name>``, a user's ``package.module:Class``).

Callers use ``forward_all`` for features, ``embed`` for the pooled backbone output and
``head`` for the classifier, without knowing the class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from kdflow.errors import ParamsError
from kdflow.models import _external
from kdflow.models._layers import resolve_layers
from kdflow.registry import Registry

MODELS: Registry = Registry("architecture", "kdflow.models")

__all__ = ["MODELS", "build_for_task", "build_model", "check_arch", "model_spec", "resolve_layers"]


def check_arch(name: str, key: str = "arch") -> None:
    """``models.<role>.arch`` is a registered name or one of the prefixed forms (checked
    without importing timm/torchvision or running user code); one line otherwise."""
    if _external.is_external(name):
        _external.check(name, key)
    elif name not in MODELS:
        raise ParamsError(
            f"params.yaml: {key} = {name!r} is not allowed: unknown {MODELS.kind}; valid: "
            f"{', '.join(MODELS.names())}, timm:<name>, torchvision:<name>, "
            "<package.module>:<Class>"
        )


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    width: int = 32,
    depth: int = 3,
    kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build an architecture for this input shape and class count (``kwargs``: the prefixed
    forms' constructor arguments)."""
    kwargs = dict(kwargs or {})
    if _external.is_external(arch):
        return _external.build(arch, num_classes, in_channels, image_size, kwargs)
    if kwargs:
        raise ParamsError(
            f"{arch} takes width and depth, not kwargs {sorted(kwargs)}; kwargs are for "
            "timm:, torchvision: and own-module architectures"
        )
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
        spec["arch"], n, task.in_channels, task.image_size, spec["width"], spec["depth"],
        spec.get("kwargs"),
    )  # fmt: skip


def model_spec(cfg: Any) -> dict[str, Any]:
    """The architecture fields that go into a checkpoint (to rebuild it later); ``kwargs`` only
    when given, so specs of the registered architectures stay as they were."""
    spec = {"arch": cfg.arch, "width": cfg.width, "depth": cfg.depth}
    kwargs = getattr(cfg, "kwargs", None)
    if kwargs:
        spec["kwargs"] = dict(kwargs)
    return spec


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
