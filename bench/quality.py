"""Quality: teacher, student alone and every distillation method over seeds, on the default task.

The teacher is the pipeline's (models/teacher.pt, trained by `dvc repro`); the students are
trained with the params of the train and distill stages, one run per seed and method.
    python bench/quality.py [--seeds 3] [--methods kd dkd dist ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import save, table

from kdflow.checkpoint import load_model
from kdflow.config import load_params
from kdflow.distill import DistillObjective, freeze, probe_dims
from kdflow.distributed import seed_everything
from kdflow.losses import LOSSES
from kdflow.metrics import agreement_metrics, classification_metrics, predict
from kdflow.models import build_model
from kdflow.tasks import load_task
from kdflow.trainer import Trainer


def run_student(params, task, teacher, method: str | None, seed: int, cached) -> dict[str, float]:
    s = params.models.student
    seed_everything(seed)
    model = build_model(
        s.arch, task.num_classes, task.in_channels, task.image_size, s.width, s.depth
    )
    if method is None:
        cfg, objective = params.train.student, None
    else:
        dcfg = params.distill.model_copy(update={"method": method})
        probe = task["train"][0][:2]
        loss = LOSSES.get(method)(dcfg, probe_dims(model, probe), probe_dims(teacher, probe))
        use_cache = dcfg.cache_teacher and not loss.needs_features and not dcfg.train.augment
        objective = DistillObjective(loss, [teacher], cached if use_cache else None)
        cfg = dcfg.train
    cfg = cfg.model_copy(update={"seed": seed, "device": "cpu"})
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        trainer = Trainer(cfg, model, task["train"], task["val"], objective=objective)
        trainer.fit()
    x, y = task["test"]
    logits = predict(trainer.model, x)
    return {
        "accuracy": classification_metrics(logits, y)["accuracy"],
        "agreement": agreement_metrics(logits, predict(teacher, x))["agreement"],
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    ap.add_argument("--teacher", default="models/teacher.pt")
    ap.add_argument("--data", default="data/prepared/old")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    task = load_task(args.data)
    teacher = freeze(load_model(args.teacher, "teacher", expect_classes=task.num_classes)[0])
    x, y = task["test"]
    t_acc = classification_metrics(predict(teacher, x), y)["accuracy"]
    cached = predict(teacher, task["train"][0])
    methods = args.methods or LOSSES.names()
    results: dict[str, list[dict[str, float]]] = {}
    for name in ["alone", *methods]:
        for seed in range(args.seeds):
            r = run_student(params, task, teacher, None if name == "alone" else name, seed, cached)
            results.setdefault(name, []).append(r)
            print(f"{name} seed {seed}: acc {r['accuracy']:.4f} agree {r['agreement']:.4f} "
                  f"({r['seconds']:.0f}s)", flush=True)  # fmt: skip
    alone = statistics.mean(r["accuracy"] for r in results["alone"])
    rows = [
        {"model": "teacher", "accuracy": f"{t_acc:.4f}", "agreement": "1", "gap recovered": "100%"}
    ]
    for name, rs in results.items():
        acc = [r["accuracy"] for r in rs]
        agr = [r["agreement"] for r in rs]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        gap = (statistics.mean(acc) - alone) / (t_acc - alone) if t_acc != alone else float("nan")
        rows.append({
            "model": "student alone" if name == "alone" else f"student + {name}",
            "accuracy": f"{statistics.mean(acc):.4f} ± {sd(acc):.4f}",
            "agreement": f"{statistics.mean(agr):.4f} ± {sd(agr):.4f}",
            "gap recovered": "0%" if name == "alone" else f"{gap:+.0%}",
        })  # fmt: skip
    print()
    print(table(rows))
    path = save("quality", {"teacher_accuracy": t_acc, "seeds": args.seeds, "rows": rows,
                            "runs": results})  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
