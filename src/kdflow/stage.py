"""What every training stage does around its Trainer(s), written once.

A stage script parses its paths, loads params and data, and builds its model; ``TrainingStage``
does the rest: outputs checked before any work, one MLflow run, the seed, resumable Trainers,
and the model, metrics and per-epoch curves written atomically (rank 0) and logged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from kdflow.checkpoint import save_model
from kdflow.config import Params, TrainConfig
from kdflow.distributed import is_main, seed_everything
from kdflow.io import atomic_write_json, atomic_write_text, clean_stale_tmp, ensure_dir
from kdflow.models import count_params
from kdflow.tracking import Tracker
from kdflow.trainer import FitResult, Trainer


@dataclass(frozen=True)
class StagePaths:
    """A training stage's outputs, all given on its command line (dvc.yaml holds the paths)."""

    model: Path
    metrics: Path
    plots: Path
    checkpoints: Path  # resume state; not a DVC output, so `dvc repro` never deletes it

    @staticmethod
    def add_arguments(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--params", required=True, help="params.yaml")
        ap.add_argument("--model", required=True, type=Path, help="trained model (.pt)")
        ap.add_argument("--metrics", required=True, type=Path, help="metrics JSON")
        ap.add_argument("--plots", required=True, type=Path, help="per-epoch CSV")
        ap.add_argument("--checkpoints", required=True, type=Path, help="resume folder")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StagePaths:
        return cls(args.model, args.metrics, args.plots, args.checkpoints)


def fingerprint(*parts: Any) -> str:
    """A stable hash of params and input hashes: a resume checkpoint is reused only if equal."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def history_csv(history: list[dict[str, float]]) -> str:
    """Per-epoch metrics as CSV (1-based epoch first), the data of DVC's plots."""
    frame = pd.DataFrame.from_records(history).drop(columns=["epoch_seconds"], errors="ignore")
    frame.insert(0, "epoch", range(1, len(frame) + 1))  # no timings: DVC versions this file
    return frame.to_csv(index=False, float_format="%.6g", lineterminator="\n")


def train_summary(result: FitResult, model: nn.Module) -> dict[str, Any]:
    """The part of a training stage's metrics file that every stage shares."""
    last = result.history[-1] if result.history else {}
    best = result.history[result.best_epoch] if result.history else {}
    return {
        "params": count_params(model),
        "epochs": len(result.history),
        "best_epoch": result.best_epoch + 1,
        "train": {"loss": last.get("train_loss"), "accuracy": last.get("train_accuracy")},
        "val": {k.removeprefix("val_"): v for k, v in best.items() if k.startswith("val_")},
    }


class TrainingStage:
    """One run of a training stage: use as ``with TrainingStage(...) as stage:``."""

    def __init__(
        self,
        name: str,
        params: Params,
        paths: StagePaths,
        logged: dict[str, Any],
        inputs: dict[str, str],
        seed: int,
        run_name: str | None = None,
    ) -> None:
        self.name = name
        self.paths = paths
        for p in (paths.model, paths.metrics, paths.plots):  # writable before any work
            clean_stale_tmp(ensure_dir(Path(p).parent))
        self.tracker = Tracker(
            params.tracking, name, logged, inputs, enabled=is_main(), run_name=run_name
        ).preflight()
        seed_everything(seed)
        self.trainers: list[Trainer] = []
        self.history: list[dict[str, float]] = []

    def __enter__(self) -> TrainingStage:
        self.tracker.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.tracker.__exit__(*exc)

    def fit(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor] | None = None,
        *,
        fingerprint: str,
        phase: str = "",
        **trainer_kwargs: Any,
    ) -> FitResult:
        """Train (resuming if a checkpoint of the same fingerprint exists); epochs are logged.

        Several calls (a strategy's phases, ``phase`` = its index) continue one history, with a
        ``phase`` column.
        """
        offset = len(self.history)
        trainer = Trainer(
            cfg,
            model,
            train,
            val,
            ckpt_dir=self.paths.checkpoints / phase if phase else self.paths.checkpoints,
            fingerprint=fingerprint,
            name=trainer_kwargs.pop("name", self.name),
            on_epoch=lambda m, e: self.tracker.log_metrics(m, offset + e),
            **trainer_kwargs,
        )
        result = trainer.fit()
        rows = result.history
        self.history += [{**h, "phase": float(phase)} for h in rows] if phase else rows
        self.trainers.append(trainer)
        return result

    @property
    def seconds(self) -> float:
        """Training time of this run (MLflow only: DVC files hold no timings)."""
        return sum(h.get("epoch_seconds", 0.0) for h in self.history)

    def save(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        metrics: dict[str, Any],
        registered_name: str,
        example: torch.Tensor,
    ) -> None:
        """Write model, metrics and curves atomically (rank 0), log them, drop resume state."""
        if is_main():
            save_model(self.paths.model, model, meta)
            atomic_write_json(self.paths.metrics, metrics)
            atomic_write_text(self.paths.plots, history_csv(self.history))
            self.tracker.log_summary({**metrics, "train_seconds": self.seconds})
            self.tracker.log_artifact(self.paths.metrics)
            self.tracker.log_model(model, registered_name, example)
        for t in self.trainers:
            t.finish()
