"""What the training stages share: fingerprints, metrics files, per-epoch CSVs, MLflow logging."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdflow.checkpoint import save_model
from kdflow.engine import FitResult, is_main
from kdflow.io import atomic_write_json, atomic_write_text, clean_stale_tmp, ensure_dir
from kdflow.models import count_params


def prepare_outputs(*paths: str | Path) -> None:
    """Before any work: output folders exist and are writable; a killed run's temp files go."""
    for p in paths:
        clean_stale_tmp(ensure_dir(Path(p).parent))


def fingerprint(*parts: Any) -> str:
    """A stable hash of params and input hashes: a resume checkpoint is reused only if equal."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def history_csv(history: list[dict[str, float]]) -> str:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["epoch", *keys], lineterminator="\n")
    writer.writeheader()
    for i, row in enumerate(history):
        writer.writerow({"epoch": i + 1, **{k: f"{row[k]:.6g}" if k in row else "" for k in keys}})
    return buf.getvalue()


def train_summary(result: FitResult, model: nn.Module) -> dict[str, Any]:
    last = result.history[-1] if result.history else {}
    best = result.history[result.best_epoch] if result.history else {}
    return {
        "params": count_params(model),
        "train_seconds": round(sum(h["epoch_seconds"] for h in result.history), 3),
        "epochs": len(result.history),
        "best_epoch": result.best_epoch + 1,
        "train": {"loss": last.get("train_loss"), "accuracy": last.get("train_accuracy")},
        "val": {k.removeprefix("val_"): v for k, v in best.items() if k.startswith("val_")},
    }


def write_stage_outputs(
    *,
    model: nn.Module,
    meta: dict[str, Any],
    model_path: str | Path,
    metrics: dict[str, Any],
    metrics_path: str | Path,
    history: list[dict[str, float]],
    plots_path: str | Path,
    tracker: Any,
    registered_name: str,
    example: torch.Tensor,
) -> None:
    """Write model, metrics and curves atomically (rank 0), then log them to MLflow."""
    if not is_main():
        return
    save_model(model_path, model, meta)
    atomic_write_json(metrics_path, metrics)
    atomic_write_text(plots_path, history_csv(history))
    tracker.log_metrics(flat_metrics(metrics))
    tracker.log_artifact(metrics_path)
    tracker.log_model(model, registered_name, example)


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flat_metrics(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out
