"""GPU benchmark: AMP + channels_last training speed of resnet32x4 / resnet8x4, then a short
distillation run with that pair, on Fashion-MNIST. No internet: the IDX files travel in
a prepared old task (data/prepared/old, carried to the GPU machine). Prints a short table last and writes JSON.
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

from kdflow.config import DistillConfig, TrainConfig
from kdflow.distill import build_objective, freeze
from kdflow.distributed import seed_everything
from kdflow.metrics import agreement_metrics, classification_metrics, predict
from kdflow.models import build_model
from kdflow.tasks import load_task
from kdflow.trainer import Trainer


def speed(arch: str, task, device: str, amp: bool, steps: int, batch: int) -> float:
    """Training images/s over ``steps`` steps after warm-up (synchronised)."""
    seed_everything(0)
    model = build_model(arch, task.num_classes, task.in_channels, task.image_size)
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
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, optimizer="sgd", lr=0.05,
                      schedule="cosine", augment=True, device=args.device)  # fmt: skip
    x, y = task["test"]
    results = {}
    for role, arch in (("teacher", "resnet32x4"), ("student alone", "resnet8x4")):
        seed_everything(0)
        m = build_model(arch, task.num_classes, task.in_channels, task.image_size)
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            Trainer(cfg, m, task["train"], task["val"]).fit()
        results[role] = (m.eval(), time.perf_counter() - t0)
    teacher = freeze(results["teacher"][0])
    t_logits = predict(teacher, x)
    for method in ("kd", "dkd"):
        seed_everything(0)
        m = build_model("resnet8x4", task.num_classes, task.in_channels, task.image_size)
        dcfg = DistillConfig(method=method, train=cfg)
        objective = build_objective(dcfg, m, [teacher], ["t"], task["train"][0], "", None)
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            Trainer(cfg, m, task["train"], task["val"], objective=objective).fit()
        results[f"student + {method}"] = (m.eval(), time.perf_counter() - t0)
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
