"""The training recipes of the pipeline as plain functions (no files, no tracking).

Benchmarks and sweeps call these, so what they measure is what the stages train: the same
labelled subset, model, objective and Trainer.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdflow.config import Params, TrainConfig
from kdflow.distill import build_objective
from kdflow.distributed import seed_everything
from kdflow.metrics import classification_metrics, predict
from kdflow.models import build_model
from kdflow.strategies import STRATEGIES
from kdflow.tasks import Task, labelled_train
from kdflow.trainer import FitResult, Trainer
from kdflow.transfer import TransferNet, run_strategy, transfer_model


def train_student(
    params: Params,
    task: Task,
    teachers: list[nn.Module] | None = None,
    teacher_hashes: list[str] | None = None,
    cache_dir: str | None = "cache",
    quiet: bool = True,
    role: str = "student",
) -> tuple[nn.Module, FitResult]:
    """The student alone (no teachers: ``train.student``) or distilled (``distill``).

    ``role="teacher"`` trains the teacher as ``train@teacher`` does.
    """
    scfg = getattr(params.models, role)
    cfg = params.distill.train if teachers else getattr(params.train, role)
    seed_everything(cfg.seed)
    model = build_model(
        scfg.arch, task.num_classes, task.in_channels, task.image_size, scfg.width, scfg.depth
    )
    objective = None
    if teachers:
        objective = build_objective(
            params.distill, model, teachers, teacher_hashes or [], task["train"][0],
            task.content_hash, cache_dir,
        )  # fmt: skip
    train = labelled_train(task, cfg.label_fraction, params.data.seed, hide=bool(teachers))
    out = io.StringIO() if quiet else None
    with contextlib.redirect_stderr(out) if out else contextlib.nullcontext():
        trainer = Trainer(cfg, model, train, task["val"], objective=objective)
        result = trainer.fit()
    return model.eval(), result


def fold_indices(y: Tensor, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (train, held-out) index pairs over the labelled shots."""
    from sklearn.model_selection import StratifiedKFold

    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return list(split.split(np.zeros(len(y)), y.numpy()))


def transfer_once(
    source: nn.Module,
    spec: dict[str, Any],
    old_classes: int,
    new: Task,
    strategy: str,
    options: dict[str, Any],
    cfg: TrainConfig,
    train: tuple[Tensor, Tensor],
) -> TransferNet:
    """One transfer as the stage does it (seeded, on a copy of ``source``), without files."""
    seed_everything(cfg.seed)
    scratch = STRATEGIES.meta(strategy).get("from_scratch", False)
    model = transfer_model(copy.deepcopy(source), spec, old_classes, new, scratch)
    with contextlib.redirect_stderr(io.StringIO()):
        return run_strategy(model, STRATEGIES.get(strategy), options, train, cfg)


def cv_transfer(
    source: nn.Module,
    spec: dict[str, Any],
    old_classes: int,
    new: Task,
    strategy: str,
    options: dict[str, Any],
    cfg: TrainConfig,
    folds: int = 5,
) -> float:
    """Mean held-out accuracy of a transfer strategy over k folds of the labelled shots.

    Only the new task's training shots are used: the test set stays unseen.
    """
    x, y = new["train"]
    scores = []
    for train_idx, held_idx in fold_indices(y, folds, cfg.seed):
        part = (x[train_idx], y[train_idx])
        model = transfer_once(source, spec, old_classes, new, strategy, options, cfg, part)
        held = torch.as_tensor(held_idx)
        scores.append(classification_metrics(predict(model, x[held]), y[held])["accuracy"])
    return float(np.mean(scores))
