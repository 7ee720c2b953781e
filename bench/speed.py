"""Speed: images/s of kdflow's Trainer against a bare PyTorch loop, and distillation's cost.

Same model, batch, data and thread count; the runs alternate and repeat, the median counts.
    python bench/speed.py [--repeats 3] [--data data/prepared/old]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import median, save, table

from kdflow.config import DistillConfig, TrainConfig
from kdflow.distill import build_objective, freeze
from kdflow.losses import LOSSES
from kdflow.models import build_for_task, model_spec
from kdflow.params import load_params, validate_options
from kdflow.seed import seed_everything
from kdflow.tasks import load_task
from kdflow.trainer import Trainer


def bare_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> float:
    """The loop a person writes by hand: shuffle, slice, forward, backward, step."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()  # the same memory format as the Trainer's
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))
    t0 = time.perf_counter()
    for i in range(0, len(x), cfg.batch_size):
        idx = perm[i : i + cfg.batch_size]
        loss = F.cross_entropy(model(x[idx].contiguous(memory_format=fmt)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def trainer_epoch(model: torch.nn.Module, data, cfg: TrainConfig, objective=None) -> float:
    """One epoch of the Trainer (no validation, no checkpoint: the loop itself)."""
    trainer = Trainer(cfg.model_copy(update={"epochs": 1}), model, data, None, objective=objective)
    with contextlib.redirect_stderr(io.StringIO()):
        t0 = time.perf_counter()
        trainer.fit()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default="data/prepared/old")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    task = load_task(args.data)
    x, y = task["train"]
    n = len(y)
    rows, raw = [], {}
    models = {}
    for role in ("teacher", "student"):
        seed_everything(0)
        models[role] = build_for_task(model_spec(getattr(params.models, role)), task)
    teacher = freeze(build_for_task(model_spec(params.models.teacher), task))
    # KD with its default options, built as the distill stage builds it: with the teacher-logit
    # cache (computed once, here into a temporary folder) and without (teacher run each step).
    # augment off only for that choice (the cache's condition); the epochs run train.student.
    kd = {"kd": validate_options(LOSSES, "distill.methods", "kd", {})}
    dcfg = DistillConfig(method="kd", methods=kd,
                         train=params.train.student.model_copy(update={"augment": False}))  # fmt: skip
    objectives = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cache_dir in (("distill_cached", tmp), ("distill_online", None)):
            objectives[name] = build_objective(dcfg, models["student"], [teacher], ["teacher"],
                                               x, task.content_hash, cache_dir)  # fmt: skip
    assert objectives["distill_cached"].cached is not None
    for role in ("teacher", "student"):
        cfg = getattr(params.train, role).model_copy(update={"device": "cpu"})
        times = {"bare": [], "trainer": []}
        if role == "student":
            times.update({"distill_cached": [], "distill_online": []})
        for _ in range(args.repeats):
            times["bare"].append(bare_epoch(models[role], x, y, cfg))
            times["trainer"].append(trainer_epoch(models[role], (x, y), cfg))
            if role == "student":
                for k, objective in objectives.items():
                    times[k].append(trainer_epoch(models[role], (x, y), cfg, objective))
        raw[role] = times
        med = {k: median(v) for k, v in times.items()}
        rows.append(
            {
                "model": role,
                "loop": "bare PyTorch",
                "img/s": round(n / med["bare"]),
                "ratio": 1.0,
                "epoch_cost_vs_alone": "",
            }
        )
        rows.append({"model": role, "loop": "kdflow Trainer", "img/s": round(n / med["trainer"]),
                     "ratio": med["bare"] / med["trainer"], "epoch_cost_vs_alone": ""})  # fmt: skip
        if role == "student":
            for k, label in (("distill_cached", "distill, cached teacher"),
                             ("distill_online", "distill, online teacher")):  # fmt: skip
                rows.append({"model": role, "loop": label, "img/s": round(n / med[k]),
                             "ratio": med["trainer"] / med[k],
                             "epoch_cost_vs_alone": med[k] / med["trainer"]})  # fmt: skip
    print(table(rows))
    path = save("speed", {"rows": rows, "seconds": raw, "images_per_epoch": n,
                          "repeats": args.repeats})  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
