"""Adversarial distillation: D learns, the student learns from D alone, D stays out of the
student's optimizer, resumes are exact, and the resume state comes from global rank 0."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdflow.config import TrainConfig
from kdflow.distill import DistillObjective, build_objective, cached_teacher_logits, freeze
from kdflow.errors import ParamsError
from kdflow.metrics import soft_kl
from kdflow.models import build_model
from kdflow.outputs import Outputs
from kdflow.params import parse_params
from kdflow.resume import ResumeCheckpoint, from_rank0
from kdflow.seed import seed_everything
from kdflow.tasks import load_task
from kdflow.trainer import Trainer
from tests.conftest import method_loss

N, K = 64, 10


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is several times faster on a busy machine, and fixes the
    thread count the bit-for-bit comparisons run at."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def prototypes(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher logits that depend on the class only (so a conditional D can know them
    exactly), a random student's logits and the labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % K
    proto = torch.randn(K, K, generator=g) * 2 + 4 * torch.eye(K)
    return proto[y], torch.randn(N, K, generator=g), y


def d_snapshot(loss) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in loss.adversary.net.state_dict().items()}


def test_discriminator_separates_teacher_from_random_student() -> None:
    t, s, y = prototypes()
    loss = method_loss("adversarial")
    for _ in range(300):  # 300 D steps on the same fixed logits
        loss(Outputs(s), Outputs(t), y)
    loss.eval()
    before = d_snapshot(loss)
    out = loss(Outputs(s), Outputs(t), y)
    assert out["d_acc_real"] > 0.9 and out["d_acc_fake"] > 0.9, out
    after = d_snapshot(loss)
    assert all(torch.equal(before[k], after[k]) for k in before)  # eval mode: D does not learn


def test_adversarial_term_alone_pulls_the_student_to_the_teacher() -> None:
    t, s0, y = prototypes()
    torch.manual_seed(0)
    loss = method_loss("adversarial", ce_weight=0.0, kd_weight=0.0, adv_weight=1.0)
    s = torch.nn.Parameter(s0.clone())
    opt = torch.optim.Adam([s], lr=0.01)
    start = float(soft_kl(s.detach(), t))
    for _ in range(1200):
        out = loss(Outputs(s), Outputs(t), y)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    end = float(soft_kl(s.detach(), t))
    assert end < 0.2 * start, (start, end)


def test_discriminator_gets_no_student_gradient_and_is_not_optimised_by_the_trainer() -> None:
    t, s0, y = prototypes()
    loss = method_loss("adversarial", ce_weight=0.0, kd_weight=0.0, adv_weight=1.0)
    s = s0.clone().requires_grad_(True)
    out = loss(Outputs(s), Outputs(t), y)
    d_params = list(loss.adversary.net.parameters())
    for p in d_params:
        p.grad = None  # D's own step left its gradients: clear them, then the student's term
    out["loss"].backward()
    assert all(p.grad is None for p in d_params)
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert not list(loss.parameters())  # D is no parameter of the loss, nor of its objective
    objective = DistillObjective(loss, [], cached=t)
    assert objective.own_parameters() == []
    x = torch.randn(N, 4)
    trainer = Trainer(
        TrainConfig(epochs=1, batch_size=16, device="cpu", min_steps=0, channels_last=False),
        torch.nn.Linear(4, K),
        (x, y),
        objective=objective,
    )
    history = trainer.fit().history
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in loss.adversary.net.parameters()}
    assert {"train_d_acc_real", "train_d_acc_fake", "train_adv"} <= set(history[0])


class Boom(Exception):
    pass


def _distill(digits_dir: Path, ckpt: Path | None, die_after: int | None = None):
    """A 3-epoch adversarial distillation from cached logits of a random frozen teacher."""
    task = load_task(digits_dir / "old")
    x, y = task["train"]
    seed_everything(0)
    teacher = freeze(build_model("cnn", 5, 1, 8, width=8, depth=2))
    cache = cached_teacher_logits([teacher], x, "k", digits_dir / "adv-cache")
    seed_everything(0)
    student = build_model("cnn", 5, 1, 8, width=4, depth=2)
    objective = DistillObjective(method_loss("adversarial", d_steps=2), [teacher], cache)

    def die(metrics: dict, epoch: int) -> None:
        if epoch == die_after:
            raise Boom

    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.01, device="cpu", min_steps=0)
    trainer = Trainer(cfg, student, (x, y), task["val"], objective=objective, ckpt_dir=ckpt,
                      fingerprint="f", on_epoch=die)  # fmt: skip
    return trainer, trainer.fit()


def test_resumed_adversarial_run_equals_uninterrupted(
    digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdflow.resume

    monkeypatch.setattr(kdflow.resume, "SAVE_EVERY_S", 0.0)  # a checkpoint after every epoch
    full, _ = _distill(digits_dir, None)
    with pytest.raises(Boom):
        _distill(digits_dir, tmp_path, die_after=1)
    resumed, result = _distill(digits_dir, tmp_path)
    assert result.resumed_from == 2 and "train_d_acc_fake" in result.history[-1]
    for (k, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    d_full, d_resumed = full.objective.extra_state(), resumed.objective.extra_state()
    for k, v in d_full["net"].items():
        assert torch.equal(v, d_resumed["net"][k]), k
    s_full, s_resumed = d_full["optimizer"]["state"], d_resumed["optimizer"]["state"]
    for i, state in s_full.items():
        for k, v in state.items():
            assert torch.equal(v, s_resumed[i][k]), (i, k)


def test_builds_through_the_registry_and_rejects_bad_options() -> None:
    loss = method_loss("adversarial", hidden=[16, 8], label_smoothing=0.1, conditional=False)
    out = loss(Outputs(torch.randn(4, 3, requires_grad=True)), Outputs(torch.randn(4, 3)),
               torch.tensor([0, -1, 2, 1]))  # fmt: skip
    assert torch.isfinite(out["loss"]) and loss.needs_features is False
    for key, value in [("d_steps", 0), ("hidden", [0]), ("label_smoothing", 0.5), ("d_lr", 0)]:
        raw = {"distill": {"method": "adversarial", "methods": {"adversarial": {key: value}}}}
        with pytest.raises(ParamsError, match=rf"distill\.methods\.adversarial\.{key}") as exc:
            parse_params(raw)
        assert "\n" not in str(exc.value)


def test_runs_from_cached_teacher_logits(tmp_path: Path) -> None:
    cfg = parse_params({"distill": {"method": "adversarial"}}).distill
    seed_everything(0)
    teacher = freeze(build_model("cnn", 5, 1, 8, width=4, depth=2))
    student = build_model("cnn", 5, 1, 8, width=4, depth=2)
    x = torch.randn(20, 1, 8, 8)
    objective = build_objective(cfg, student, [teacher], ["t"], x, "d", tmp_path)
    assert objective.cached is not None
    idx = torch.arange(8)
    loss, _, parts = objective(student, x[idx], torch.zeros(8, dtype=torch.long), idx, 0)
    assert torch.isfinite(loss) and {"d_acc_real", "d_acc_fake"} <= set(parts)


def test_discriminator_init_is_fixed_by_the_seed() -> None:
    t, s, y = prototypes()

    def first_d() -> dict[str, torch.Tensor]:
        seed_everything(3)
        loss = method_loss("adversarial")
        loss.eval()
        loss(Outputs(s), Outputs(t), y)
        return d_snapshot(loss)

    a, b = first_d(), first_d()
    assert all(torch.equal(a[k], b[k]) for k in a)
    seed_everything(3)
    draw = torch.rand(1)
    seed_everything(3)
    loss = method_loss("adversarial")
    loss.eval()
    loss(Outputs(s), Outputs(t), y)
    assert torch.equal(torch.rand(1), draw)  # building D drew nothing from the global stream


# ------------------------------------------------------ multi-node resume (issue 21)


def test_from_rank0_in_one_process_is_the_plain_read() -> None:
    assert from_rank0(lambda: {"epoch": 3}) == {"epoch": 3}
    assert from_rank0(lambda: None) is None


def _resume_worker(rank: int, init: str, dirs: list[str], out: str) -> None:
    """One of 2 gloo ranks: each sees only its own checkpoint folder (no shared filesystem)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        torch.manual_seed(100 + rank)  # different fresh weights, and seeds, on each rank
        part = torch.nn.Linear(3, 2)
        ckpt = ResumeCheckpoint(dirs[rank], "f", 2, {"model": part}, lambda m: None)
        resumed = ckpt.load()
        # rank 0's D is broadcast and its gradients averaged: different batches, one D
        loss = method_loss("adversarial")
        t, s, y = prototypes(seed=rank)
        loss(Outputs(s), Outputs(t), y)
        d = torch.cat([p.detach().reshape(-1) for p in loss.adversary.net.parameters()])
        torch.save({"resumed": resumed, "weight": part.weight.detach(), "d": d}, f"{out}{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_resume_state_comes_from_global_rank_0(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    dirs = [str(tmp_path / "node0"), str(tmp_path / "node1")]
    for d in dirs:
        Path(d).mkdir()
    torch.manual_seed(0)
    saved = torch.nn.Linear(3, 2)
    ResumeCheckpoint(dirs[0], "f", 2, {"model": saved}, print).save(4, [{"a": 1.0}] * 4, {})
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_resume_worker, args=(init, dirs, str(tmp_path / "out")), nprocs=2, join=True)
    outs = [torch.load(tmp_path / f"out{r}.pt", weights_only=False) for r in (0, 1)]
    for o in outs:
        assert o["resumed"][0] == 4 and len(o["resumed"][1]) == 4
        assert torch.equal(o["weight"], saved.weight.detach())
    assert torch.equal(outs[0]["d"], outs[1]["d"])


def test_adversarial_stage_on_cached_logits_under_two_processes(tmp_path: Path) -> None:
    """`-S distill.method=adversarial` in the pipeline: the distill stage on cached teacher
    logits, launched on 2 processes by compute.nproc_per_node; D's accuracy per epoch."""
    import csv
    import json

    import yaml

    from tests.conftest import make_repo, run_stage, tiny_params

    params = tiny_params()
    params["tracking"]["log_models"] = False
    repo = make_repo(tmp_path / "repo", params)
    for argv in (
        ["stages/prepare.py"],
        ["stages/train.py", "teacher"],
        ["stages/train.py", "student"],
    ):
        run_stage(repo, *argv)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["distill"]["method"] = "adversarial"
    p["compute"]["nproc_per_node"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = run_stage(repo, "stages/distill.py", timeout=600)
    assert proc.stdout.count("[distill] adversarial") == 1  # rank 0 alone reports
    metrics = json.loads((repo / "metrics/distill.json").read_text())
    assert metrics["method"] == "adversarial" and metrics["teacher_cache"] is True
    assert metrics["test"]["accuracy"] > 0.5
    rows = list(csv.DictReader((repo / "plots/distill.csv").open()))
    assert len(rows) == 4 and all(0.0 <= float(r["train_d_acc_fake"]) <= 1.0 for r in rows)
