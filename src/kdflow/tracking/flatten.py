"""Nested params and metrics as the flat ``a.b.c`` names MLflow stores and compares."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def flatten_params(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys, for MLflow."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump()
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_params(v, f"{prefix}{k}."))
        if not obj and prefix:
            out[prefix[:-1]] = "{}"
    else:
        out[prefix[:-1]] = obj
    return out


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numbers as ``a.b.c`` keys; strings, flags and None are left out."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flat_metrics(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out
