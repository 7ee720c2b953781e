"""The Trainer: determinism, resume after interruption, NaN guard, selection, models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdflow.config import TrainConfig
from kdflow.errors import KdflowError
from kdflow.metrics import predict
from kdflow.models import MODELS, build_model, count_params
from kdflow.seed import seed_everything
from kdflow.tasks import load_task
from kdflow.trainer import Trainer

CFG = TrainConfig(epochs=3, batch_size=64, lr=0.01, device="cpu")


def _train(digits_dir: Path, cfg: TrainConfig = CFG, ckpt: Path | None = None, **kw):
    task = load_task(digits_dir / "old")
    seed_everything(cfg.seed)
    model = build_model("cnn", task.num_classes, 1, 8, width=8, depth=2)
    trainer = Trainer(cfg, model, task["train"], task["val"], ckpt_dir=ckpt, fingerprint="f", **kw)
    return trainer, trainer.fit(), task


def test_same_seed_same_weights_and_metrics(digits_dir: Path) -> None:
    t1, r1, _ = _train(digits_dir)
    t2, r2, _ = _train(digits_dir)
    strip = [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in r1.history]
    assert strip == [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in r2.history]
    for (k, a), b in zip(
        t1.model.state_dict().items(), t2.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    assert r1.history[-1]["val_accuracy"] > 0.8


class Boom(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(digits_dir: Path, tmp_path: Path) -> None:
    full, _, _task = _train(digits_dir)

    def die(metrics: dict, epoch: int) -> None:
        if epoch == 1:
            raise Boom

    with pytest.raises(Boom):
        _train(digits_dir, ckpt=tmp_path, on_epoch=die)
    assert (tmp_path / "last.pt").is_file()
    resumed, result, _ = _train(digits_dir, ckpt=tmp_path)
    # epoch 2's state was not written (within SAVE_EVERY_S of epoch 1's): it is trained again
    assert result.resumed_from == 1 and len(result.history) == 3
    for (k, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    resumed.finish()
    assert not (tmp_path / "last.pt").exists()


def test_resume_checkpoint_is_written_first_last_and_every_save_every_s(
    digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdflow.resume as resume

    saved: list[int] = []
    write = resume.atomic_torch_save
    monkeypatch.setattr(
        resume,
        "atomic_torch_save",
        lambda path, state: (saved.append(state["epoch"]), write(path, state)),
    )
    cfg = CFG.model_copy(update={"epochs": 6})
    _train(digits_dir, cfg=cfg, ckpt=tmp_path / "a")  # sub-second epochs: within one interval
    assert saved == [1, 6]
    saved.clear()
    monkeypatch.setattr(resume, "SAVE_EVERY_S", 0.0)
    _train(digits_dir, cfg=cfg, ckpt=tmp_path / "b")
    assert saved == [1, 2, 3, 4, 5, 6]


def test_checkpoint_of_other_params_is_not_reused(digits_dir: Path, tmp_path: Path) -> None:
    _train(digits_dir, cfg=CFG.model_copy(update={"epochs": 1}), ckpt=tmp_path)
    task = load_task(digits_dir / "old")
    model = build_model("cnn", 5, 1, 8, width=8, depth=2)
    trainer = Trainer(
        CFG, model, task["train"], task["val"], ckpt_dir=tmp_path, fingerprint="other"
    )
    assert trainer.fit().resumed_from == 0


def test_checkpoint_of_another_world_size_is_not_resumed(
    digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Shards and per-rank augmentation depend on the number of processes: a checkpoint
    written by 2 is not resumed by 1 (the Trainer records the world size it sees)."""
    import kdflow.trainer as tr

    def die(metrics: dict, epoch: int) -> None:
        raise Boom

    monkeypatch.setattr(tr, "world_size", lambda: 2)
    with pytest.raises(Boom):
        _train(digits_dir, ckpt=tmp_path, on_epoch=die)
    assert (tmp_path / "last.pt").is_file()
    monkeypatch.undo()
    _, result, _ = _train(digits_dir, ckpt=tmp_path)
    assert result.resumed_from == 0 and len(result.history) == 3
    assert "written by 2 process(es), this run has 1; starting over" in capsys.readouterr().err


def test_nan_guard_names_epoch_and_step(digits_dir: Path) -> None:
    cfg = CFG.model_copy(update={"lr": 1e30, "optimizer": "sgd", "schedule": "constant"})
    with pytest.raises(KdflowError, match=r"loss became (nan|inf) at epoch \d+, step \d+"):
        _train(digits_dir, cfg=cfg)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "multistep", "constant"])
def test_schedules_and_optimizers(digits_dir: Path, schedule: str) -> None:
    cfg = CFG.model_copy(update={"schedule": schedule, "optimizer": "sgd", "epochs": 2, "lr": 0.05})
    _, result, _ = _train(digits_dir, cfg=cfg)
    assert result.history[-1]["train_accuracy"] > 0.5


def test_select_best_restores_the_best_validation_epoch(digits_dir: Path) -> None:
    trainer, result, task = _train(digits_dir, cfg=CFG.model_copy(update={"select": "best"}))
    best = max(range(3), key=lambda i: result.history[i]["val_accuracy"])
    assert result.best_epoch == best
    acc = float((predict(trainer.model, task["val"][0]).argmax(1) == task["val"][1]).float().mean())
    assert acc == pytest.approx(result.history[best]["val_accuracy"])


def test_augmentation_runs_and_is_deterministic(digits_dir: Path) -> None:
    cfg = CFG.model_copy(update={"augment": True, "epochs": 1})
    t1, _, _ = _train(digits_dir, cfg=cfg)
    t2, _, _ = _train(digits_dir, cfg=cfg)
    assert all(
        torch.equal(a, b)
        for a, b in zip(t1.model.state_dict().values(), t2.model.state_dict().values(), strict=True)
    )


def test_models_share_one_interface() -> None:
    x = torch.randn(2, 3, 32, 32)
    for arch in MODELS.names():
        m = build_model(arch, 7, 3, 32, width=8, depth=3).eval()
        out = m(x, with_features=True)
        assert out.logits.shape == (2, 7), arch
        assert out.features and all(f.ndim == 4 for f in out.features), arch
        assert out.embedding.shape == (2, m.head.in_features), arch
        assert torch.allclose(m(x), out.logits, atol=1e-5), arch
        head = {id(p) for p in m.head.parameters()}
        assert all(id(p) not in head for p in m.backbone_parameters()), arch


def test_default_teacher_and_student_sizes() -> None:
    teacher = count_params(build_model("cnn", 5, 1, 28, width=32, depth=3))
    student = count_params(build_model("cnn", 5, 1, 28, width=8, depth=3))
    assert 80_000 < teacher < 120_000
    assert teacher / student >= 15
