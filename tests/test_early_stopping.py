"""Budgets that stop when learning stops: early stopping, the step ceiling, and transfer's
number of epochs chosen on held-out shots."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kdflow.budget import passes, plateaued
from kdflow.config import TrainConfig, TransferTrainConfig
from kdflow.pipeline import recipes
from kdflow.tasks import load_task
from kdflow.trainer import Trainer
from tests.conftest import DIVERGES, mlp

CPU = {"device": "cpu", "channels_last": False}


def test_plateau_rule() -> None:
    assert not plateaued([0.5, 0.6, 0.7], patience=1)
    assert plateaued([0.5, 0.7, 0.7], patience=1)  # no gain in the last evaluation
    assert not plateaued([0.5, 0.7, 0.7], patience=2)
    assert plateaued([0.5, 0.70, 0.705, 0.709], patience=2, min_delta=0.01)  # gains too small
    assert not plateaued([0.5, 0.7, 0.7, 0.7], patience=None)  # off


def test_passes_floor_and_ceiling() -> None:
    assert passes(epochs=3, min_steps=0, steps=4) == 3
    assert passes(epochs=3, min_steps=100, steps=4) == 25  # the floor adds passes
    assert passes(epochs=30, min_steps=0, steps=4, max_steps=10) == 3  # the ceiling cuts


def _fit(cfg: TrainConfig, digits: Path) -> tuple[Trainer, object]:
    task = load_task(digits / "old")
    x, y = task["train"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[:1].numel(), 5))
    trainer = Trainer(cfg, model, (x, y), task["val"])
    return trainer, trainer.fit()


def test_divergence_rule() -> None:
    from kdflow.progress import diverged, first_divergence

    assert diverged([]) is None and diverged([2.0]) is None
    assert diverged([1.2, 0.5, 0.4]) is None  # learning
    assert diverged([0.01, 0.002, 0.009]) is None  # 4.5x, but a rounding error's worth
    assert "rose from 0.5000 (epoch 2) to 1.6000 at epoch 3" in diverged([1.2, 0.5, 1.6])
    assert "nan at epoch 2" in diverged([1.0, float("nan")])
    # a resumed run rechecks the epochs it replays: one that blew up and recovered did blow up
    assert diverged([1.2, 0.5, 1.6, 0.4]) is None
    assert "to 1.6000 at epoch 3" in first_divergence([1.2, 0.5, 1.6, 0.4])
    assert first_divergence([]) is None and first_divergence([1.2, 0.5, 0.4]) is None


def test_a_run_that_blows_up_says_so(digits_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """The own case's fine-tune left its basin at a high rate and sat at chance to the end:
    the run says so once, and the result carries it (the stage tags its MLflow run)."""
    task = load_task(digits_dir / "old")
    x, y = task["train"]
    result = Trainer(TrainConfig(**DIVERGES), mlp(x), (x, y), task["val"]).fit()
    losses = [h["train_loss"] for h in result.history]
    assert losses[1] > 3 * losses[0] and result.diverged is not None
    assert result.diverged.startswith("training loss rose from") and "at epoch 2" in result.diverged
    err = capsys.readouterr().err
    assert err.count("warning: training loss rose") == 1 and "lower lr or set grad_clip" in err
    calm = TrainConfig(**{**DIVERGES, "lr": 0.05, "optimizer": "adamw", "schedule": "cosine"})
    assert Trainer(calm, mlp(x), (x, y), task["val"]).fit().diverged is None
    assert "warning" not in capsys.readouterr().err


def test_training_stops_when_validation_stops_improving(digits_dir: Path) -> None:
    cfg = TrainConfig(epochs=200, batch_size=64, lr=0.05, select="best", patience=2, **CPU)
    _, result = _fit(cfg, digits_dir)
    run = len(result.history)
    assert result.stopped_early and run < 200  # a solved problem does not use its ceiling
    scores = [h["val_accuracy"] for h in result.history]
    assert max(scores[-2:]) <= max(scores[:-2])  # the last `patience` epochs did not improve
    assert result.best_epoch == scores.index(max(scores))  # the best epoch is kept
    off = cfg.model_copy(update={"patience": None, "epochs": run + 3})
    _, full = _fit(off, digits_dir)
    assert len(full.history) == run + 3 and not full.stopped_early


def test_cooldown_anneals_before_stopping(digits_dir: Path) -> None:
    cfg = TrainConfig(epochs=200, batch_size=64, lr=0.05, select="best", patience=2,
                      cooldown=0.015, schedule="constant", **CPU)  # fmt: skip
    _, result = _fit(cfg, digits_dir)
    lrs = [h["lr"] for h in result.history]
    assert result.stopped_early and len(lrs) < 200
    assert lrs[-1] == 0.0 and lrs[-4] == 0.05  # constant, then 0.015 of 200 = 3 falling to 0
    assert lrs[-3] > lrs[-2] > lrs[-1]
    assert plateaued([h["val_accuracy"] for h in result.history[:-3]], 2)  # it began there


def test_no_stopping_before_the_warm_up_share(digits_dir: Path) -> None:
    cfg = TrainConfig(epochs=40, batch_size=64, lr=0.05, select="best", patience=1, **CPU)
    _, quick = _fit(cfg, digits_dir)
    _, warm = _fit(cfg.model_copy(update={"stop_after": 0.5}), digits_dir)
    assert len(quick.history) < 20 <= len(warm.history)  # 0.5 of 40 epochs come first
    assert warm.stopped_early and len(warm.history) < 40


def test_max_steps_is_a_ceiling(digits_dir: Path) -> None:
    cfg = TrainConfig(epochs=50, batch_size=64, select="last", max_steps=7, **CPU)
    trainer, result = _fit(cfg, digits_dir)
    assert trainer.scheduler.last_epoch == 7  # steps, even mid-pass
    assert len(result.history) == 7 // trainer.budget.steps + 1


def test_early_stopping_resumes_where_it_stopped(digits_dir: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=200, batch_size=64, lr=0.05, select="best", patience=2, cooldown=0.01,
                      **CPU)  # fmt: skip
    task = load_task(digits_dir / "old")
    x, _ = task["train"]

    def run() -> tuple[Trainer, object]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(x[:1].numel(), 5))
        t = Trainer(cfg, model, task["train"], task["val"], ckpt_dir=tmp_path, fingerprint="f")
        return t, t.fit()

    first, done = run()
    again, resumed = run()  # the checkpoint already says: stopped
    assert resumed.history == done.history and resumed.stopped_early
    for a, b in zip(
        first.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("strategy", ["finetune", "lp_ft"])
def test_transfer_chooses_its_epochs_on_held_out_shots(digits_dir: Path, strategy: str) -> None:
    from kdflow.params import parse_params

    params = parse_params({"data": {"dataset": "digits"}, "models": {
        "student": {"arch": "cnn", "width": 4, "depth": 2}}})  # fmt: skip
    old, new = load_task(digits_dir / "old"), load_task(digits_dir / "new")
    source, _ = recipes.initial_model(params, "student", old)
    spec = {"arch": "cnn", "width": 4, "depth": 2}
    cfg = TransferTrainConfig(epochs=300, batch_size=16, lr=0.01, select="last", patience=3,
                              holdout=0.25, **CPU)  # fmt: skip
    model, phases = recipes.transfer_setup(params, strategy, source, spec, old, new)
    seen: list[TrainConfig] = []

    def fit(pcfg: TrainConfig, *args: object, **kwargs: object):
        seen.append(pcfg)
        return recipes.plain_fit(pcfg, *args, **kwargs)

    opts = params.transfer.options_for(strategy)
    chosen = recipes.transfer_train(opts, cfg, model, phases, new["train"], fit, strategy)
    epochs = chosen["early_stopping"]["epochs"]
    assert 1 <= epochs < 300 and chosen["early_stopping"]["holdout"] == 0.25
    assert [c.epochs for c in seen] == [epochs]  # every shot, for the chosen number of epochs
    assert seen[0].patience is None and seen[0].min_steps == 0
