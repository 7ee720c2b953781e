"""Distillation: a frozen teacher, cached == online, and agreement actually rises."""

from __future__ import annotations

from pathlib import Path

import torch

from kdflow.config import DistillConfig, TrainConfig
from kdflow.distill import DistillObjective, cache_key, cached_teacher_logits, freeze
from kdflow.engine import Trainer, agreement_metrics, predict, seed_everything
from kdflow.losses import LOSSES
from kdflow.models import build_model
from kdflow.tasks import load_task

CFG = TrainConfig(epochs=20, batch_size=32, lr=0.01, device="cpu")


def _teacher(task) -> torch.nn.Module:
    seed_everything(1)
    t = build_model("cnn", 5, 1, 8, width=32, depth=2)
    Trainer(
        CFG.model_copy(update={"epochs": 8, "batch_size": 64}), t, task["train"], task["val"]
    ).fit()
    return t


def _student(task, teacher=None, method="kd", cached=False):
    seed_everything(0)
    s = build_model("cnn", 5, 1, 8, width=3, depth=2)
    objective = None
    if teacher is not None:
        dcfg = DistillConfig(method=method, temperature=4.0, alpha=0.9)
        loss = LOSSES.get(method)(dcfg, [], [])
        cache = predict(teacher, task["train"][0]) if cached else None
        objective = DistillObjective(loss, [teacher], cache)
    Trainer(CFG, s, task["train"], task["val"], objective=objective).fit()
    return s


def test_distillation_raises_agreement_and_leaves_teacher_untouched(digits_dir: Path) -> None:
    task = load_task(digits_dir / "old")
    teacher = freeze(_teacher(task))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    alone = _student(task)
    distilled = _student(task, teacher, cached=False)  # online: the teacher runs every step
    after = teacher.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"teacher {k} changed"
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())
    x, _ = task["test"]
    t_logits = predict(teacher, x)
    agree_alone = agreement_metrics(predict(alone, x), t_logits)["agreement"]
    agree_kd = agreement_metrics(predict(distilled, x), t_logits)["agreement"]
    assert agree_kd > agree_alone, (agree_kd, agree_alone)
    kl_alone = agreement_metrics(predict(alone, x), t_logits)["kl_to_teacher"]
    kl_kd = agreement_metrics(predict(distilled, x), t_logits)["kl_to_teacher"]
    assert kl_kd < kl_alone, (kl_kd, kl_alone)


def test_cached_and_online_teacher_give_the_same_loss(digits_dir: Path, tmp_path: Path) -> None:
    task = load_task(digits_dir / "old")
    seed_everything(0)
    teacher = freeze(build_model("cnn", 5, 1, 8, width=8, depth=2))
    student = build_model("cnn", 5, 1, 8, width=4, depth=2)
    x, y = task["train"]
    cache = cached_teacher_logits(
        [teacher], x, cache_key(["t"], "d"), tmp_path, torch.device("cpu")
    )
    assert (tmp_path / f"teacher_logits_{cache_key(['t'], 'd')}.pt").is_file()
    for method in ("kd", "dkd", "dist"):
        loss = LOSSES.get(method)(DistillConfig(method=method), [], [])
        idx = torch.arange(10, 42)
        online = DistillObjective(loss, [teacher])(student, x[idx], y[idx], idx, 0)[0]
        cached = DistillObjective(loss, [teacher], cache)(student, x[idx], y[idx], idx, 0)[0]
        torch.testing.assert_close(online, cached, rtol=1e-5, atol=1e-6)


def test_cache_key_changes_with_teacher_or_data() -> None:
    k = cache_key(["a"], "d")
    assert k != cache_key(["b"], "d") and k != cache_key(["a"], "e") and k == cache_key(["a"], "d")


def test_ensemble_teachers_average_logits(digits_dir: Path) -> None:
    task = load_task(digits_dir / "old")
    seed_everything(0)
    t1, t2 = (freeze(build_model("cnn", 5, 1, 8, width=4, depth=2)) for _ in range(2))
    x = task["test"][0][:16]
    obj = DistillObjective(LOSSES.get("kd")(DistillConfig(), [], []), [t1, t2])
    out = obj.teacher_outputs(x, torch.arange(16))
    torch.testing.assert_close(out.logits, (t1(x) + t2(x)) / 2)
