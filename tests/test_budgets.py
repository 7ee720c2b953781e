"""Budgets in optimizer steps, a linear probe solved to convergence, and few labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdflow.config import DistillConfig, TrainConfig
from kdflow.losses import LOSSES
from kdflow.losses._base import ce
from kdflow.outputs import Outputs
from kdflow.probe import cv_folds, fit_logistic, solve_head
from kdflow.tasks import label_mask, labelled_train, load_task
from kdflow.trainer import Trainer


def _count_steps(cfg: TrainConfig, n: int) -> int:
    x, y = torch.randn(n, 1, 8, 8), torch.randint(0, 3, (n,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    trainer = Trainer(cfg, model, (x, y))
    trainer.fit()
    return trainer.scheduler.last_epoch  # one scheduler step per optimizer step


def test_min_steps_is_a_floor_on_optimizer_steps() -> None:
    base = TrainConfig(epochs=3, batch_size=16, device="cpu", channels_last=False, select="last")
    assert _count_steps(base, 50) == 3 * 4  # 50 images, batch 16: 4 steps an epoch
    floored = base.model_copy(update={"min_steps": 100})
    steps = _count_steps(floored, 50)
    assert 100 <= steps < 100 + 3 * 4  # whole passes over the data, at least 100 steps
    big = base.model_copy(update={"min_steps": 5})  # a floor below the budget changes nothing
    assert _count_steps(big, 50) == 12


def test_probe_matches_a_converged_sklearn_fit_and_chooses_c_by_cv(digits_dir: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 6)) * 3
    y = np.repeat(np.arange(4), 30)
    feats = centers[y] + rng.normal(size=(120, 6))
    weight, bias, info = fit_logistic(feats, y)
    assert info["cv_folds"] == 5 and info["C"] > 0 and info["cv_accuracy"] > 0.8
    ours = (feats @ weight.T + bias).argmax(1)
    z = (feats - feats.mean(0)) / (feats.std(0) + 1e-8)
    ref = LogisticRegression(C=info["C"], max_iter=5000, tol=1e-8).fit(z, y).predict(z)
    assert (ours == ref).mean() == 1.0
    assert cv_folds(np.array([0, 0, 1]), 5) == 0  # one label in a class: no CV, C = 1
    # the head of a real network, solved on its embeddings
    task = load_task(digits_dir / "new")
    net = nn.Sequential()  # a stand-in with .embed: flatten the image
    net.embed = lambda x: x.flatten(1)  # type: ignore[attr-defined]
    net.register_parameter("p", nn.Parameter(torch.zeros(1)))
    head = nn.Linear(64, task.num_classes)
    solve_head(head, net, *task["train"])
    acc = (head(task["test"][0].flatten(1)).argmax(1) == task["test"][1]).float().mean()
    assert acc > 0.85


def test_label_mask_is_stratified_and_fixed_by_seed() -> None:
    y = torch.arange(5).repeat_interleave(200)
    m = label_mask(y, 0.1, seed=0)
    assert [int(m[y == c].sum()) for c in range(5)] == [20] * 5
    assert torch.equal(m, label_mask(y, 0.1, seed=0))
    assert not torch.equal(m, label_mask(y, 0.1, seed=1))
    assert label_mask(y, 0.001, 0).sum() == 5  # at least one label per class
    assert label_mask(y, 1.0, 0).all()


def test_labelled_train_hides_or_drops_labels(digits_dir: Path) -> None:
    task = load_task(digits_dir / "old")
    x, y = labelled_train(task, 0.25, seed=0)
    xh, yh = labelled_train(task, 0.25, seed=0, hide=True)
    assert len(xh) == len(task["train"][1]) and (yh >= 0).sum() == len(y)
    assert torch.equal(xh[yh >= 0], x) and torch.equal(yh[yh >= 0], y)


def test_unlabelled_images_get_soft_targets_only() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.tensor([0, 1, -1, -1, 4, -1])
    assert torch.isclose(ce(s, y), nn.functional.cross_entropy(s[y >= 0], y[y >= 0]))
    assert ce(s, torch.full((6,), -1)) == 0
    for method in ("kd", "dkd", "dist"):  # the logit methods (feature ones only add terms)
        loss = LOSSES.get(method)(DistillConfig(method=method, temperature=4.0), [], [])
        out = loss(Outputs(s.clone().requires_grad_()), Outputs(t), y, epoch=10)
        assert torch.isfinite(out["loss"]), method


@pytest.mark.parametrize("fraction", [0.02, 1.0])
def test_distillation_trains_with_few_labels(digits_dir: Path, fraction: float) -> None:
    from kdflow.config import parse_params
    from kdflow.recipes import train_student

    task = load_task(digits_dir / "old")

    def params(fraction: float, width: int):
        small = {"epochs": 4, "batch_size": 64, "min_steps": 300, "label_fraction": fraction}
        return parse_params({
            "data": {"dataset": "digits"}, "models": {"student": {"width": width, "depth": 2}},
            "train": {"student": small}, "distill": {"train": small, "temperature": 4.0},
        })  # fmt: skip

    teacher, _ = train_student(params(1.0, 16), task)  # all labels, a wider net
    alone, _ = train_student(params(fraction, 4), task)
    distilled, _ = train_student(params(fraction, 4), task, [teacher], ["t"], cache_dir=None)
    val = task["val"]
    acc = {n: float((m(val[0]).argmax(1) == val[1]).float().mean()) for n, m in
           {"teacher": teacher, "alone": alone, "distilled": distilled}.items()}  # fmt: skip
    assert acc["teacher"] > 0.9, acc
    if fraction < 1:  # soft targets on every image carry what the missing labels would have
        assert acc["distilled"] > acc["alone"] + 0.1, acc
