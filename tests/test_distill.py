"""Distillation: a frozen teacher, cached == online, and agreement actually rises."""

from __future__ import annotations

from pathlib import Path

import torch

from kdflow.config import TrainConfig
from kdflow.distill import DistillObjective, cache_key, cached_teacher_logits, freeze
from kdflow.metrics import agreement_metrics, predict
from kdflow.models import build_model
from kdflow.seed import seed_everything
from kdflow.tasks import load_task
from kdflow.trainer import Trainer
from tests.conftest import method_loss

CFG = TrainConfig(epochs=20, batch_size=32, lr=0.01, device="cpu")


def _teacher(task) -> torch.nn.Module:
    seed_everything(1)
    t = build_model("cnn", 5, 1, 8, width=32, depth=2)
    Trainer(
        CFG.model_copy(update={"epochs": 8, "batch_size": 64}), t, task["train"], task["val"]
    ).fit()
    return t


def _student(task, seed: int, teacher=None):
    """A student trained on 60 labelled images, where the teacher's soft targets matter most."""
    x, y = task["train"]
    sub = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:60]
    seed_everything(seed)
    s = build_model("cnn", 5, 1, 8, width=8, depth=2)
    objective = None
    if teacher is not None:
        loss = method_loss("kd", temperature=2.0, alpha=0.9)
        objective = DistillObjective(loss, [teacher])  # online: the teacher runs every step
    cfg = CFG.model_copy(update={"epochs": 30, "batch_size": 16, "seed": seed})
    Trainer(cfg, s, (x[sub], y[sub]), task["val"], objective=objective).fit()
    return s


def test_distillation_raises_agreement_and_leaves_teacher_untouched(digits_dir: Path) -> None:
    task = load_task(digits_dir / "old")
    teacher = freeze(_teacher(task))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x, _ = task["test"]
    t_logits = predict(teacher, x)
    alone, kd = [], []
    for seed in range(3):
        alone.append(agreement_metrics(predict(_student(task, seed), x), t_logits))
        kd.append(agreement_metrics(predict(_student(task, seed, teacher), x), t_logits))
    after = teacher.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"teacher {k} changed"
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())

    def mean(rows: list[dict], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    assert mean(kd, "agreement") > mean(alone, "agreement"), (kd, alone)
    assert mean(kd, "kl_to_teacher") < mean(alone, "kl_to_teacher"), (kd, alone)


def test_cached_and_online_teacher_give_the_same_loss(digits_dir: Path, tmp_path: Path) -> None:
    task = load_task(digits_dir / "old")
    seed_everything(0)
    teacher = freeze(build_model("cnn", 5, 1, 8, width=8, depth=2))
    student = build_model("cnn", 5, 1, 8, width=4, depth=2)
    x, y = task["train"]
    cache = cached_teacher_logits([teacher], x, cache_key(["t"], "d"), tmp_path)
    assert (tmp_path / f"teacher_logits_{cache_key(['t'], 'd')}.pt").is_file()
    for method in ("kd", "dkd", "dist"):
        loss = method_loss(method)
        idx = torch.arange(10, 42)
        online = DistillObjective(loss, [teacher])(student, x[idx], y[idx], idx, 0)[0]
        cached = DistillObjective(loss, [teacher], cache)(student, x[idx], y[idx], idx, 0)[0]
        torch.testing.assert_close(online, cached, rtol=1e-5, atol=1e-6)


def test_online_teacher_under_amp_gives_the_cached_targets(
    digits_dir: Path, tmp_path: Path
) -> None:
    task = load_task(digits_dir / "old")
    seed_everything(0)
    teacher = freeze(build_model("cnn", 5, 1, 8, width=8, depth=2))
    x, _ = task["train"]
    cache = cached_teacher_logits([teacher], x, "k", tmp_path)
    loss = method_loss("kd")
    idx = torch.arange(0, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the Trainer does when amp is on
        online = DistillObjective(loss, [teacher]).teacher_outputs(x[idx], idx).logits
    assert online.dtype == torch.float32
    torch.testing.assert_close(online, cache[idx], rtol=0, atol=1e-6)


def test_ddp_padding_is_not_counted(monkeypatch) -> None:
    import kdflow.trainer as tr

    task_x, task_y = torch.zeros(5, 1, 8, 8), torch.zeros(5, dtype=torch.long)
    trainer = Trainer(TrainConfig(epochs=1, batch_size=2), torch.nn.Flatten(), (task_x, task_y))
    monkeypatch.setattr(tr, "initialized", lambda: True)
    monkeypatch.setattr(tr, "world_size", lambda: 2)
    # 5 samples on 2 ranks: DistributedSampler gives each 3, rank 1's third is padding
    monkeypatch.setattr(tr, "rank", lambda: 1)
    assert trainer._real(0, 2).tolist() == [True, True] and trainer._real(2, 1).tolist() == [False]
    monkeypatch.setattr(tr, "rank", lambda: 0)
    assert trainer._real(2, 1).tolist() == [True]


def test_cache_key_changes_with_teacher_or_data() -> None:
    k = cache_key(["a"], "d")
    assert k != cache_key(["b"], "d") and k != cache_key(["a"], "e") and k == cache_key(["a"], "d")


def test_ensemble_teachers_average_logits(digits_dir: Path) -> None:
    task = load_task(digits_dir / "old")
    seed_everything(0)
    t1, t2 = (freeze(build_model("cnn", 5, 1, 8, width=4, depth=2)) for _ in range(2))
    x = task["test"][0][:16]
    obj = DistillObjective(method_loss("kd"), [t1, t2])
    out = obj.teacher_outputs(x, torch.arange(16))
    torch.testing.assert_close(out.logits, (t1(x) + t2(x)) / 2)
