"""Budgets in optimizer steps, a linear probe solved to convergence, and few labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdflow.config import TrainConfig
from kdflow.losses._base import ce
from kdflow.outputs import Outputs
from kdflow.probe import cv_folds, fit_logistic, solve_head
from kdflow.tasks import label_mask, labelled_train, load_task
from kdflow.trainer import Trainer
from tests.conftest import method_loss


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
    assert 100 <= steps < 100 + 4  # whole passes over the data, at least 100 steps
    big = base.model_copy(update={"min_steps": 5})  # a floor below the budget changes nothing
    assert _count_steps(big, 50) == 12


def test_global_batch_must_split_evenly_over_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    import kdflow.budget as budget
    from kdflow.errors import ParamsError

    assert budget.per_rank_batch(100, 4) == 25 and budget.per_rank_batch(7, 1) == 7
    with pytest.raises(ParamsError, match="batch_size 100 is not divisible by the 3 processes"):
        budget.per_rank_batch(100, 3)  # would silently train batch 99
    monkeypatch.setattr(budget, "world_size", lambda: 3)  # what the Trainer sees under DDP
    cfg = TrainConfig(epochs=1, batch_size=100, device="cpu")
    with pytest.raises(ParamsError, match=r"batch_size 100 .* 3 processes"):
        _count_steps(cfg, 50)


def test_probe_matches_a_converged_sklearn_fit_and_chooses_c_by_cv(digits_dir: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 6)) * 3
    y = np.repeat(np.arange(4), 30)
    feats = centers[y] + rng.normal(size=(120, 6))
    weight, bias, info = fit_logistic(feats, y)
    assert info["cv_folds"] == 5 and info["C"] > 0 and info["cv_accuracy"] > 0.8
    assert info["converged"] and info["iterations"] < 100  # Newton-CG: a few dozen at most
    # the fold-back: the head on raw features gives sklearn's probabilities on standardised ones
    z = (feats - feats.mean(0)) / (feats.std(0) + 1e-8)
    ref = LogisticRegression(C=info["C"], max_iter=10_000, tol=1e-10).fit(z, y).predict_proba(z)
    ours = torch.softmax(torch.as_tensor(feats @ weight.T + bias), 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-3)  # solved to scikit-learn's tolerance
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


def test_probe_converges_on_ill_conditioned_embeddings() -> None:
    """Singular values spread over four decades, as a MobileNet's embeddings' are: L-BFGS runs
    out of iterations at large C (1,000 here, and far from the optimum in the own case), the
    probe's Newton-CG converges in a few dozen at every C of the grid."""
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(200, 120)))
    v, _ = np.linalg.qr(rng.normal(size=(120, 120)))
    feats = (u * np.logspace(0, -4, 120) * np.sqrt(200)) @ v.T
    y = np.argmax(u @ rng.normal(size=(120, 4)) + 0.02 * rng.normal(size=(200, 4)), 1)
    _, _, info = fit_logistic(feats, y)
    assert info["converged"] and info["iterations"] < 100, info


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
    s = s.double()
    t = t.double()
    labelled = y >= 0
    # an unlabelled image contributes its soft terms only: the loss equals the same batch with
    # the teacher's top class as its label, minus exactly the CE those rows would add
    as_labels = torch.where(labelled, y, t.argmax(1))
    for method in ("kd", "dkd", "dist"):  # the logit methods (feature ones only add terms)
        loss = method_loss(method, temperature=4.0)
        part = loss(Outputs(s), Outputs(t), y, epoch=10)
        full = loss(Outputs(s), Outputs(t), as_labels, epoch=10)
        ce_only_labelled = nn.functional.cross_entropy(s[labelled], y[labelled])
        torch.testing.assert_close(part["ce"], ce_only_labelled)
        soft_part = part["loss"] - _ce_weight(method, loss) * part["ce"]
        soft_full = full["loss"] - _ce_weight(method, loss) * full["ce"]
        # kd and dist read no labels in their soft terms; dkd splits at the teacher's top class
        torch.testing.assert_close(soft_part, soft_full)


def _ce_weight(method: str, loss: nn.Module) -> float:
    return 1.0 - loss.alpha if method == "kd" else loss.ce_weight


@pytest.mark.parametrize("fraction", [0.02, 1.0])
def test_distillation_trains_with_few_labels(digits_dir: Path, fraction: float) -> None:
    from kdflow.params import parse_params
    from kdflow.pipeline.recipes import distilled, trained_role

    task = load_task(digits_dir / "old")

    def params(fraction: float, width: int):
        small = {"epochs": 4, "batch_size": 64, "min_steps": 300}
        return parse_params({
            "data": {"dataset": "digits"}, "models": {"student": {"width": width, "depth": 2}},
            "train": {"defaults": small, "student": {"label_fraction": fraction}},
            "distill": {"methods": {"kd": {"temperature": 4.0}}},
        })  # fmt: skip

    teacher, _ = trained_role(params(1.0, 16), "student", task)  # all labels, a wider net
    alone, _ = trained_role(params(fraction, 4), "student", task)
    student, _ = distilled(params(fraction, 4), task, [teacher], ["t"])
    val = task["val"]
    acc = {n: float((m(val[0]).argmax(1) == val[1]).float().mean()) for n, m in
           {"teacher": teacher, "alone": alone, "distilled": student}.items()}  # fmt: skip
    assert acc["teacher"] > 0.9, acc
    if fraction < 1:  # soft targets on every image carry what the missing labels would have
        assert acc["distilled"] > acc["alone"] + 0.1, acc
