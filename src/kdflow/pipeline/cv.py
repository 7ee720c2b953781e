"""Cross-validation on the new task's labelled shots: how transfer settings are chosen.

The new task has no validation split; its test set stays unseen, so a configuration is scored
by its mean held-out accuracy over stratified folds of the shots.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch import Tensor, nn

from kdflow.config import Params
from kdflow.errors import ParamsError
from kdflow.metrics import classification_metrics, predict
from kdflow.pipeline.recipes import transferred
from kdflow.probe import cv_folds
from kdflow.tasks import Task


def fold_indices(y: Tensor, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (train, held-out) index pairs over the labelled shots; fewer folds
    when a class has fewer shots than ``folds`` (as the probe does), none below 2 shots."""
    k = cv_folds(y.numpy(), folds)
    if not k:
        raise ParamsError(
            f"params.yaml: data.shots_per_class = {int(np.bincount(y.numpy()).min())} is too few "
            "to cross-validate a transfer; at least 2 labelled images per class are needed"
        )
    split = StratifiedKFold(k, shuffle=True, random_state=seed)
    return list(split.split(np.zeros(len(y)), y.numpy()))


def cv_transfer(
    params: Params,
    strategy: str,
    source: nn.Module,
    spec: dict,
    old: Task,
    new: Task,
    folds: int = 5,
) -> float:
    """Mean held-out accuracy of ``transfer@<strategy>`` as params set it, over k folds."""
    x, y = new["train"]
    scores = []
    for train_idx, held_idx in fold_indices(y, folds, params.transfer.train.seed):
        part = (x[train_idx], y[train_idx])
        model = transferred(params, strategy, source, spec, old, new, part)
        held = torch.as_tensor(held_idx)
        scores.append(classification_metrics(predict(model, x[held]), y[held])["accuracy"])
    return float(np.mean(scores))
