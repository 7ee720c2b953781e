"""What every training stage does around its Trainer(s), written once.

A stage module loads params and data and builds its model through the recipes;
``TrainingStage`` does the rest: outputs checked before any work, one MLflow run, resumable
Trainers, and the model, metrics and per-epoch curves written atomically (rank 0) and logged.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import Tensor, nn

from kdflow.checkpoint import save_model
from kdflow.config import Params, TrainConfig
from kdflow.distributed import is_main, require_shared
from kdflow.io import atomic_write_json, atomic_write_text, clean_stale_tmp, ensure_dir
from kdflow.metrics import classification_metrics, predict
from kdflow.models import count_params
from kdflow.tracking import Tracker, process_seconds
from kdflow.trainer import FitResult, Trainer

if TYPE_CHECKING:
    from kdflow.tasks import Task


def model_card(meta: dict[str, Any]) -> dict[str, Any]:
    """What a user of the logged model needs besides weights: how to prepare its input."""
    norm = meta.get("normalization") or {}
    return {
        "spec": dict(meta.get("spec") or {}),
        "num_classes": meta.get("num_classes"),
        "in_channels": meta.get("in_channels"),
        "image_size": meta.get("image_size"),
        "input": f"float32 NCHW {meta.get('in_channels')}x{meta.get('image_size')}x"
        f"{meta.get('image_size')}: pixels/255, then (x - mean) / std per channel",
        "normalization": norm,
        "classes": list(meta.get("classes") or []),
        "new_classes": list(meta.get("new_classes_names") or []),
        "output": "logits (softmax for probabilities)",
    }


RUN_FILE = "mlflow_run.json"  # beside the resume checkpoints: the MLflow run they belong to


def read_run_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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


def test_metrics(model: nn.Module, test: tuple[Tensor, Tensor]) -> dict[str, float]:
    """Accuracy and NLL on the test split: looked at once, to report."""
    return classification_metrics(predict(model, test[0]), test[1])


def adopted_summary(model: nn.Module, val: tuple[Tensor, Tensor]) -> dict[str, Any]:
    """A model adopted without training: the same keys, measured, with no epochs."""
    return {
        "params": count_params(model),
        "epochs": 0,
        "best_epoch": 0,
        "adopted": True,
        "train": {"loss": None, "accuracy": None},
        "val": classification_metrics(predict(model, val[0]), val[1]),
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
        run_name: str | None = None,
        upstream: dict[str, dict[str, Any]] | None = None,
        datasets: Sequence[tuple[Task, Sequence[str]]] = (),
    ) -> None:
        self.name = name
        self.datasets = list(datasets)  # (task, splits) the stage reads: the run's inputs
        self.paths = paths
        for p in (paths.model, paths.metrics, paths.plots):  # writable before any work
            clean_stale_tmp(ensure_dir(Path(p).parent))
        self.tracker = Tracker(
            params.tracking,
            name,
            logged,
            inputs,
            enabled=is_main(),
            run_name=run_name,
            upstream=upstream,
            pipeline_params=params,
            checkpoints=paths.checkpoints,
            output=paths.model,
        ).preflight()
        # An interrupted run of the same params and inputs is continued, not duplicated.
        self.run_file = paths.checkpoints / RUN_FILE
        self.run_fingerprint = fingerprint(self.tracker.params, inputs)
        previous = read_run_file(self.run_file)
        if previous:
            same = previous.get("fingerprint") == self.run_fingerprint
            same = same and previous.get("uri") == self.tracker.uri
            if same and any(paths.checkpoints.rglob("last.pt")):
                self.tracker.resume_run_id = previous.get("run_id")
            else:
                self.stale_run_id = previous.get("run_id")
        self.trainers: list[Trainer] = []
        self.history: list[dict[str, float]] = []
        self.work_seconds, self._depth = 0.0, 0

    stale_run_id: str | None = None

    def __enter__(self) -> TrainingStage:
        self.tracker.__enter__()
        try:  # the run is open: whatever fails now must end it (FAILED), not leave it RUNNING
            if self.stale_run_id and self.stale_run_id != self.tracker.run_id:
                self.tracker.abandon(self.stale_run_id)
            if is_main():
                ensure_dir(self.paths.checkpoints)
                self.tracker.record_run(self.run_file, self.run_fingerprint)
            for task, splits in self.datasets:
                self.tracker.log_datasets(task, splits)
        except BaseException:
            self.tracker.__exit__(*sys.exc_info())
            raise
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
        phase: str = "",
        **trainer_kwargs: Any,
    ) -> FitResult:
        """Train (resuming if a checkpoint of the same params, inputs and phase exists); epochs
        are logged. Several calls (a strategy's phases, ``phase`` = its index) continue one
        history, with a ``phase`` column. The signature of ``recipes.Fit``.
        """
        offset = len(self.history)

        def log(metrics: dict[str, float], epoch: int) -> None:
            if offset + epoch not in self.tracker.logged_steps:  # a continued run has them
                self.tracker.log_metrics(metrics, offset + epoch)

        trainer = Trainer(
            cfg,
            model,
            train,
            val,
            ckpt_dir=self.paths.checkpoints / phase if phase else self.paths.checkpoints,
            fingerprint=fingerprint(self.run_fingerprint, phase, cfg.model_dump()),
            name=trainer_kwargs.pop("name", self.name),
            on_epoch=log,
            **trainer_kwargs,
        )
        require_shared(self.paths.checkpoints)  # several nodes: one filesystem, or one line
        with self.working():
            result = trainer.fit()
        if result.diverged:  # in the run, not only on stderr
            self.tracker.set_tags(
                {f"kdflow.diverged{'.' + phase if phase else ''}": result.diverged}
            )
        rows = result.history
        self.history += [{**h, "phase": float(phase)} for h in rows] if phase else rows
        self.trainers.append(trainer)
        return result

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Count the block as the stage's work (training, solving): the rest is fixed cost."""
        self._depth += 1
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.work_seconds += time.perf_counter() - t0

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
        """Write model, metrics and curves atomically (rank 0), log them, drop resume state.

        The checkpoint carries the params that made it (``lineage``), so a stage that starts
        from it logs them too. Per-epoch series (``train``/``val``) are not logged twice.
        """
        if is_main():
            lineage = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                       for k, v in self.tracker.params.items()}  # fmt: skip
            save_model(self.paths.model, model, {**meta, "lineage": lineage})
            atomic_write_json(self.paths.metrics, metrics)
            atomic_write_text(self.paths.plots, history_csv(self.history))
            final = {k: v for k, v in metrics.items() if k not in ("train", "val")}
            self.tracker.log_summary({**final, "train_seconds": self.seconds})
            self.tracker.log_artifact(self.paths.metrics)
            self.tracker.set_output(self.paths.model)
            self.tracker.log_model(
                model, registered_name, example, model_card(meta), self.paths.model
            )
            total = process_seconds()  # MLflow only: what a stage costs besides its work
            self.tracker.log_metrics({
                "time.total_seconds": total,
                "time.work_seconds": self.work_seconds,
                "time.fixed_seconds": total - self.work_seconds,
                "time.log_model_seconds": self.tracker.log_model_seconds,
            })  # fmt: skip
        for t in self.trainers:
            t.finish()
        if is_main():
            self.run_file.unlink(missing_ok=True)
