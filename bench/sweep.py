"""Choose every default on validation data: a reproducible sweep with val and test side by side.

Old task (teacher, student, distillation): each configuration trains the student as the
pipeline does and is scored on the old task's validation split. New task (transfer): each
configuration is scored by 5-fold cross-validation on the labelled shots. The test set is
scored too, only to report next to the choice, never to make it.

    python bench/sweep.py old [--only kd dkd ...] [--set train.student.epochs=30 ...]
    python bench/sweep.py new [--only finetune lwf ...]

Needs the default pipeline's prepared data and teacher (`dvc repro train@teacher`); writes
bench/results/sweep_<part>.json and prints a table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import CACHE, parse_sets, save, table

from kdflow.checkpoint import load_model
from kdflow.config import Params
from kdflow.distill import load_teachers
from kdflow.metrics import classification_metrics, predict
from kdflow.params import load_params, with_overrides
from kdflow.pipeline.cv import cv_transfer
from kdflow.pipeline.recipes import distilled, from_scratch, trained_role, transferred
from kdflow.tasks import Task, load_task
from kdflow.trainer import FitResult

# (group, label, overrides). Overrides are dotted params keys; the student-alone group varies
# train.student, the distillation groups vary distill (each method's options under
# distill.methods.<method>).
T_ALPHA = [(t, a) for t in (1.0, 2.0, 4.0, 8.0) for a in (0.5, 0.9)]
OLD_GRID: list[tuple[str, str, dict[str, Any]]] = [
    *[("teacher", f"lr={lr}", {"train.teacher.lr": lr}) for lr in (0.001, 0.003, 0.01)],
    *[("alone", f"lr={lr}", {"train.student.lr": lr}) for lr in (0.003, 0.01, 0.03)],
    *[("kd", f"T=4 alpha=0.9 lr={lr}", {"distill.method": "kd",
      "distill.methods.kd.temperature": 4.0, "distill.methods.kd.alpha": 0.9,
      "distill.train.lr": lr}) for lr in (0.003, 0.03)],
    *[("kd", f"T={t} alpha={a}", {"distill.method": "kd", "distill.methods.kd.temperature": t,
                                  "distill.methods.kd.alpha": a}) for t, a in T_ALPHA],
    *[("dkd", f"T=4 beta={b}", {"distill.method": "dkd", "distill.methods.dkd.temperature": 4.0,
                                "distill.methods.dkd.beta": b}) for b in (1.0, 2.0, 8.0)],
    *[("dist", f"T={t} beta=gamma={w}", {"distill.method": "dist",
      "distill.methods.dist.temperature": t, "distill.methods.dist.beta": w,
      "distill.methods.dist.gamma": w})
      for t in (1.0, 4.0) for w in (1.0, 2.0)],
    *[("fitnet", f"weight={w}", {"distill.method": "fitnet", "distill.methods.fitnet.weight": w})
      for w in (1.0, 10.0)],
    *[("at", f"weight={w}", {"distill.method": "at", "distill.methods.at.weight": w})
      for w in (100.0, 1000.0)],
    *[("rkd", f"d={d} a={a}", {"distill.method": "rkd", "distill.methods.rkd.distance_weight": d,
                               "distill.methods.rkd.angle_weight": a}) for d, a in ((1.0, 2.0), (25.0, 50.0))],
    # kd on z-scored logits (Sun et al. 2024: a base temperature near 2)
    *[("kd_ls", f"T={t} alpha={a}", {"distill.method": "kd", "distill.methods.kd.temperature": t,
      "distill.methods.kd.alpha": a, "distill.methods.kd.logit_standardization": True})
      for t, a in ((1.0, 0.5), (2.0, 0.5), (2.0, 0.9), (4.0, 0.5))],
    *[("adversarial", f"adv_weight={w} kd_weight={k}", {"distill.method": "adversarial",
      "distill.methods.adversarial.adv_weight": w, "distill.methods.adversarial.kd_weight": k})
      for w, k in ((0.1, 1.0), (1.0, 1.0), (1.0, 0.0))],
]  # fmt: skip

# Budgets, shortest first: epochs with no min_steps floor (on the default data the floors
# would add passes). Chosen by the one-standard-error rule (see `choose`).
BUDGET_GRID: list[tuple[str, str, dict[str, Any]]] = [
    *[("teacher_budget", f"epochs={e}", {"train.teacher.epochs": e,
      "train.teacher.min_steps": 0}) for e in (4, 6, 8)],
    *[("alone_budget", f"epochs={e}", {"train.student.epochs": e,
      "train.student.min_steps": 0}) for e in (6, 8, 10, 15)],
    *[("kd_budget", f"epochs={e}", {"distill.train.epochs": e, "distill.train.min_steps": 0})
      for e in (6, 8, 10, 15)],
]  # fmt: skip
OLD_GRID += BUDGET_GRID

LRS = (0.003, 0.01, 0.03)
STEPS = (250, 1000)
NEW_GRID: list[tuple[str, str, dict[str, Any]]] = [
    *[("scratch", f"lr={lr} steps>={n}", {"transfer.options.scratch.lr": lr,
      "transfer.train.min_steps": n}) for lr in LRS for n in STEPS],
    ("linear_probe", "C by inner CV", {}),
    *[("finetune", f"lr={lr} backbone x{m} steps>={n}", {"transfer.options.finetune.lr": lr,
      "transfer.options.finetune.backbone_lr_mult": m, "transfer.train.min_steps": n})
      for lr in LRS for m in (0.1, 1.0) for n in STEPS],
    *[("lp_ft", f"lr={lr} backbone x{m}", {"transfer.options.lp_ft.lr": lr,
      "transfer.options.lp_ft.backbone_lr_mult": m}) for lr in LRS for m in (0.1, 1.0)],
    *[("lwf", f"lr={lr} lambda={lam}", {"transfer.options.lwf.lr": lr,
      "transfer.options.lwf.lambda_old": lam}) for lr in LRS for lam in (0.3, 1.0, 3.0)],
    # BatchNorm while fine-tuning (running statistics kept, or batch statistics) and clipping,
    # at each strategy's default lr: LP-FT's probe head was solved on eval-mode features
    *[(f"{s}_bn", f"bn={bn} grad_clip={c}", {f"transfer.options.{s}.bn": bn,
      "transfer.train.grad_clip": c}) for s in ("lp_ft", "finetune")
      for bn in ("train", "frozen") for c in (None, 1.0)],
    *[(f"{s}_clip", f"grad_clip={c}", {"transfer.train.grad_clip": c})
      for s in ("scratch", "lwf") for c in (None, 1.0)],
]  # fmt: skip


def shard(grid: list, spec: str) -> list:
    """``i/n``: every n-th configuration from the i-th, to spread a sweep over processes."""
    i, n = (int(v) for v in spec.split("/"))
    return grid[i::n]


def trained(
    p: Params, group: str, task: Task, teachers: list[nn.Module], hashes: list[str]
) -> tuple[nn.Module, FitResult]:
    """What the stage of ``group`` trains: train@teacher, train@student, or distill."""
    if group.split("_")[0] in ("teacher", "alone"):
        role = "teacher" if group.startswith("teacher") else "student"
        model, result = trained_role(p, role, task)
        if result is None:
            raise SystemExit(
                f"sweep: models.{role} is adopted as is (weights with fine_tune: false); "
                "nothing is trained, so there is nothing to sweep"
            )
        return model, result
    return distilled(p, task, teachers, hashes, cache_dir=CACHE)


def sweep_old(params: Params, only: list[str] | None, args: argparse.Namespace) -> list[dict]:
    task = load_task(args.data / "old")
    teachers, hashes = load_teachers([args.teacher], task.num_classes, "cpu")  # type: ignore[arg-type]
    x, y = task["test"]
    rows = []
    for group, label, overrides in shard(OLD_GRID, args.shard):
        if only and group not in only:
            continue
        p = with_overrides(params, overrides)
        t0 = time.perf_counter()
        model, result = trained(p, group, task, teachers, hashes)
        best = result.history[result.best_epoch]
        rows.append({
            "group": group, "config": label, "val_accuracy": best["val_accuracy"],
            "test_accuracy": classification_metrics(predict(model, x), y)["accuracy"],
            "best_epoch": result.best_epoch + 1, "epochs": len(result.history),
            "n_val": len(task["val"][1]),
            "val_curve": [round(h["val_accuracy"], 4) for h in result.history],
            "seconds": round(time.perf_counter() - t0, 1), "overrides": overrides,
        })  # fmt: skip
        print(
            {k: v for k, v in rows[-1].items() if k not in ("val_curve", "overrides")}, flush=True
        )
    return rows


def sweep_new(params: Params, only: list[str] | None, args: argparse.Namespace) -> list[dict]:
    old, new = load_task(args.data / "old"), load_task(args.data / "new")
    source, ckpt = load_model(args.source, "transfer source", None, old.num_classes)
    rows = []
    for group, label, overrides in shard(NEW_GRID, args.shard):
        if only and group not in only:
            continue
        strategy = group.removesuffix("_bn").removesuffix("_clip")
        p = with_overrides(params, overrides)
        t0 = time.perf_counter()
        cv = cv_transfer(p, strategy, source, ckpt["spec"], old, new)
        # reported only: the same configuration on all shots, scored on the test set
        model = transferred(p, strategy, source, ckpt["spec"], old, new)
        test = classification_metrics(predict(model, new["test"][0]), new["test"][1])["accuracy"]
        kept = None
        if not from_scratch(strategy):
            kept = classification_metrics(
                predict(model.old_task(), old["test"][0]), old["test"][1]
            )["accuracy"]
        rows.append({
            "group": group, "config": label, "val_accuracy": cv, "test_accuracy": test,
            "old_task_accuracy": kept, "seconds": round(time.perf_counter() - t0, 1),
            "overrides": overrides,
        })  # fmt: skip
        print({k: v for k, v in rows[-1].items() if k != "overrides"}, flush=True)
        save(f"sweep_new{args.tag}", {"rows": rows, "partial": True})
    return rows


def choose(rows: list[dict]) -> dict[str, dict]:
    """Per group, the configuration with the best validation score (first listed on ties).
    Budget groups (shortest first) take the shortest budget within one standard error of the
    best, sqrt(a(1-a)/n) on the n validation images: a longer one is not shown to be better."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["group"] not in best or r["val_accuracy"] > best[r["group"]]["val_accuracy"]:
            best[r["group"]] = r
    for group, top in best.items():
        if group.endswith("_budget"):
            a = top["val_accuracy"]
            se = math.sqrt(a * (1 - a) / top["n_val"])
            best[group] = next(
                r for r in rows if r["group"] == group and r["val_accuracy"] >= a - se
            )
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=["old", "new"])
    ap.add_argument("--only", nargs="*", default=None, help="groups to run (default: all)")
    ap.add_argument("--set", nargs="*", default=[], help="params overrides for every run")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, default=Path("data/prepared"))
    ap.add_argument("--teacher", default="models/teacher.pt")
    ap.add_argument("--source", default="models/distilled.pt")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    ap.add_argument("--shard", default="0/1", help="i/n: run every n-th configuration from i")
    ap.add_argument("--merge", action="store_true", help="combine the shards' results")
    ap.add_argument("--train-teacher", action="store_true", help="first train --teacher anew")
    args = ap.parse_args()
    if args.train_teacher:
        from kdflow.checkpoint import model_meta, save_model
        from kdflow.models import model_spec

        params = with_overrides(load_params(args.params), parse_sets(args.set))
        task = load_task(args.data / "old")
        teacher, _ = trained_role(params, "teacher", task)
        meta = model_meta(model_spec(params.models.teacher), task, role="teacher")
        save_model(args.teacher, teacher, meta)
        print(f"trained {args.teacher} with {args.set}")
        return
    if args.merge:
        import json

        from _util import RESULTS

        grid = [(g, c) for g, c, _ in (OLD_GRID if args.part == "old" else NEW_GRID)]
        rows = [r for f in sorted(RESULTS.glob(f"sweep_{args.part}.s*.json"))
                for r in json.loads(f.read_text())["rows"]]  # fmt: skip
        rows.sort(key=lambda r: grid.index((r["group"], r["config"])))
    else:
        params = with_overrides(load_params(args.params), parse_sets(args.set))
        run = sweep_old if args.part == "old" else sweep_new
        rows = run(params, args.only, args)
    best = choose(rows)
    shown = [{**{k: v for k, v in r.items() if k not in ("val_curve", "overrides")},
              "chosen": "yes" if best[r["group"]] is r else ""} for r in rows]  # fmt: skip
    print()
    print(table(shown))
    path = save(f"sweep_{args.part}{args.tag}", {
        "rule": "per group, highest validation accuracy (old task: val split; new task: mean of "
                "5-fold CV on the labelled shots); first listed wins ties; *_budget groups (shortest "
                "first): the shortest within one standard error sqrt(a(1-a)/n_val) of the best",
        "set": args.set, "rows": rows, "chosen": {g: r["config"] for g, r in best.items()},
    })  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
