"""GPU benchmark: AMP + channels_last training speed of resnet32x4 / resnet8x4, then a short
distillation run with that pair, on Fashion-MNIST. No internet: the IDX files travel in
a prepared old task (data/prepared/old, carried to the GPU machine). The teacher, the student
alone and the distilled students are trained as the stages train them (kdflow.pipeline.recipes)
from params set here. Prints a short table last and writes JSON.
    python bench/gpu.py [--epochs 15] [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import save, table

from kdflow.config import Params, TrainConfig
from kdflow.distill import freeze
from kdflow.metrics import agreement_metrics, classification_metrics, predict
from kdflow.models import build_for_task
from kdflow.params import parse_params, with_overrides
from kdflow.pipeline.recipes import distilled, trained_role
from kdflow.seed import seed_everything
from kdflow.tasks import load_task
from kdflow.trainer import Trainer


def speed(arch: str, task, device: str, amp: bool, steps: int, batch: int) -> float:
    """Training images/s over ``steps`` steps after warm-up (synchronised)."""
    seed_everything(0)
    model = build_for_task({"arch": arch, "width": 32, "depth": 3}, task)
    cfg = TrainConfig(epochs=1, batch_size=batch, device=device, amp=amp, channels_last=amp)
    x, y = task["train"]
    n = min(len(y), steps * batch)
    trainer = Trainer(cfg, model, (x[:n], y[:n]), None)
    with contextlib.redirect_stderr(io.StringIO()):
        trainer.fit()  # warm-up (cudnn autotune, allocator)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.cfg = cfg.model_copy(update={"epochs": 2})
        trainer.fit()
        if device == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def bench_params(epochs: int, device: str) -> Params:
    """The pair and the schedule of the comparison, as params (every other key its default)."""
    schedule = dict(epochs=epochs, batch_size=128, optimizer="sgd", lr=0.05, schedule="cosine",
                    augment=True, device=device)  # fmt: skip
    return parse_params({
        "models": {"teacher": {"arch": "resnet32x4"}, "student": {"arch": "resnet8x4"}},
        "train": {"defaults": schedule},
        "transfer": {"train": {"augment": False}},  # not run here; lwf forbids augmenting
    })  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--data", default="data/prepared/old", help="a prepared old task")
    args = ap.parse_args()
    task = load_task(args.data)
    rows = []
    for arch in ("resnet32x4", "resnet8x4"):
        for amp in (False, True):
            ips = speed(arch, task, args.device, amp, args.steps, args.batch)
            rows.append({"what": f"train {arch}", "mode": "bf16 AMP + channels_last" if amp else "fp32",
                         "img/s": round(ips)})  # fmt: skip
            print(rows[-1], flush=True)
    params = bench_params(args.epochs, args.device)
    x, y = task["test"]
    results = {}
    for name, role in (("teacher", "teacher"), ("student alone", "student")):
        t0 = time.perf_counter()
        m, _ = trained_role(params, role, task)  # train@<role>
        results[name] = (m, time.perf_counter() - t0)
    teacher = freeze(results["teacher"][0])
    t_logits = predict(teacher, x)
    for method in ("kd", "dkd"):  # distill, each method with its default options
        t0 = time.perf_counter()
        m, _ = distilled(with_overrides(params, {"distill.method": method}), task, [teacher], ["t"])
        results[f"student + {method}"] = (m, time.perf_counter() - t0)
    for name, (m, secs) in results.items():
        logits = predict(m, x)
        rows.append({"what": name, "mode": f"{args.epochs} epochs",
                     "accuracy": round(classification_metrics(logits, y)["accuracy"], 4),
                     "agreement": round(agreement_metrics(logits, t_logits)["agreement"], 4),
                     "seconds": round(secs, 1)})  # fmt: skip
    print()
    print(table(rows))
    save("gpu", {"device": args.device, "rows": rows, "epochs": args.epochs})


if __name__ == "__main__":
    main()
