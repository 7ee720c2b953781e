"""Model checkpoints: a plain dict (tensors, strings, numbers) that loads with weights_only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdflow.errors import KdflowError
from kdflow.io import atomic_torch_save, safe_load
from kdflow.models import build_model
from kdflow.transfer import TransferNet

FORMAT = "kdflow.model/1"


def save_model(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``{meta..., state_dict}`` atomically. ``meta`` must hold ``spec`` and task info."""
    payload = {
        "format": FORMAT,
        **meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_torch_save(path, payload)


def model_meta(spec: dict[str, Any], task: Any, **extra: Any) -> dict[str, Any]:
    """What a checkpoint needs besides weights to be rebuilt and used on its task."""
    return {
        "spec": dict(spec),
        "num_classes": task.num_classes,
        "in_channels": task.in_channels,
        "image_size": task.image_size,
        "classes": task.class_names,
        "normalization": task.manifest["normalization"],
        "data_hash": task.content_hash,
        **extra,
    }


def lineage(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """The params that made a checkpoint (saved by its stage), for the runs that start from it."""
    return dict(safe_load(path, what).get("lineage") or {})


def describe(spec: dict[str, Any]) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "arch")
    return f"{spec.get('arch')}({extra})"


def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    # Checkpoints saved from DDP or torch.compile wrappers carry these prefixes.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_model(
    path: str | Path,
    what: str = "checkpoint",
    expect_spec: dict[str, Any] | None = None,
    expect_classes: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a kdflow checkpoint, with one-line errors for every mismatch."""
    ckpt = safe_load(path, what)
    if ckpt.get("format") != FORMAT or "spec" not in ckpt or "state_dict" not in ckpt:
        raise KdflowError(f"{what} {path} is not a kdflow model checkpoint (no {FORMAT} header)")
    spec = ckpt["spec"]
    if expect_spec is not None:
        have = {k: spec.get(k) for k in expect_spec}
        if have != expect_spec:
            raise KdflowError(
                f"{what} {path} is a {describe(have)} but params ask for {describe(expect_spec)}; "
                "re-run the stage that makes it or fix the architecture in params.yaml"
            )
    if expect_classes is not None and ckpt["num_classes"] != expect_classes:
        raise KdflowError(
            f"{what} {path} has {ckpt['num_classes']} classes but the task has {expect_classes}; "
            "re-train it on the current data (dvc repro)"
        )
    model = build_model(
        spec["arch"],
        ckpt["num_classes"],
        ckpt["in_channels"],
        ckpt["image_size"],
        spec.get("width", 32),
        spec.get("depth", 3),
        spec.get("kwargs"),
    )
    if spec.get("kind") == "transfer":
        model = TransferNet(model, int(spec["new_classes"]))
    try:
        model.load_state_dict(_strip_prefix(ckpt["state_dict"]))
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise KdflowError(
            f"{what} {path} does not match architecture {spec['arch']} ({first})"
        ) from None
    model.eval()
    return model, ckpt
