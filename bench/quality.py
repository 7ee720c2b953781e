"""Quality over seeds: teacher, student alone and distilled students, at several label fractions.

The teacher is the pipeline's (trained on all labels); each student is trained as the stages
train it (kdflow.pipeline.recipes: ``trained_role`` for train@student, ``distilled`` for
distill), one run per seed, method and fraction of labelled training images
(``train.student.label_fraction``, which the distilled student shares; Hinton et al. 2015: soft
targets on every image, labels on few).

    python bench/quality.py [--seeds 3] [--methods kd dkd ...] [--fractions 0.01 0.1 1.0]

A method may carry its own options: ``kd:logit_standardization=true,temperature=2`` distils
with ``distill.methods.kd`` set so (values read as YAML). Each distilled row is compared with
the student alone and, where ``kd`` ran too, with ``kd`` (McNemar per seed, bootstrap CI).

Writes bench/results/quality<tag>.json and, with several fractions, a PNG plot.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import CACHE, RESULTS, parse_sets, save, table

from kdflow.distill import ensemble_logits, load_teachers
from kdflow.metrics import agreement_metrics, classification_metrics, predict
from kdflow.params import load_params, with_overrides
from kdflow.pipeline.recipes import distilled, trained_role
from kdflow.tasks import load_task


def run(params, task, teachers, hashes, method: str | None, seed: int, fraction: float) -> dict:
    over = {
        "train.student.seed": seed,
        "distill.train.seed": seed,
        "train.student.label_fraction": fraction,  # the distilled student's labels too
    }
    if method:
        over.update(method_overrides(method))
    p = with_overrides(params, over)
    t0 = time.perf_counter()
    if method:
        model, _ = distilled(p, task, teachers, hashes, cache_dir=CACHE)
    else:
        model, _ = trained_role(p, "student", task)
    x, y = task["test"]
    logits = predict(model, x)
    return {
        "accuracy": classification_metrics(logits, y)["accuracy"],
        "agreement": agreement_metrics(logits, ensemble_logits(teachers, x))["agreement"],
        "predictions": logits.argmax(1).tolist(),
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def method_overrides(spec: str) -> dict:
    """``name`` or ``name:key=value,key=value`` as dotted params overrides."""
    name, _, options = spec.partition(":")
    sets = [f"distill.methods.{name}.{kv}" for kv in options.split(",") if kv]
    return {"distill.method": name, **parse_sets(sets)}


def summarise(results: dict, t_acc: float) -> list[dict]:
    rows = []
    for (fraction, name), rs in results.items():
        acc = [r["accuracy"] for r in rs]
        alone = statistics.mean(r["accuracy"] for r in results[(fraction, "alone")])
        gap = (statistics.mean(acc) - alone) / (t_acc - alone) if t_acc != alone else float("nan")
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        rows.append({
            "label fraction": fraction, "model": "student alone" if name == "alone" else f"student + {name}",
            "accuracy": f"{statistics.mean(acc):.4f} ± {sd:.4f}", "mean": statistics.mean(acc),
            "std": sd, "gap recovered": "" if name == "alone" else f"{gap:+.0%}",
        })  # fmt: skip
    return rows


def plot(rows: list[dict], t_acc: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = sorted(
            (r["label fraction"], r["mean"], r["std"]) for r in rows if r["model"] == model
        )
        xs, ys, es = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=model)
    ax.axhline(t_acc, ls="--", color="grey", label="teacher (all labels)")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of old-task training images with a label")
    ax.set_ylabel("old-task test accuracy (mean ± std over seeds)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="run seeds first..first+seeds-1")
    ap.add_argument("--no-alone", action="store_true", help="skip the student alone")
    ap.add_argument("--methods", nargs="*", default=["kd"])
    ap.add_argument("--fractions", nargs="*", type=float, default=[1.0])
    ap.add_argument("--set", nargs="*", default=[], help="params overrides for every run")
    ap.add_argument("--teacher", default="models/teacher.pt")
    ap.add_argument("--data", default="data/prepared/old")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tag", default="")
    ap.add_argument("--merge", nargs="*", default=None, help="combine these tags' results")
    args = ap.parse_args()
    if args.merge is not None:
        import json

        parts = [json.loads((RESULTS / f"quality{t}.json").read_text()) for t in args.merge]
        results: dict = {}
        for part in parts:
            for k, runs in part["runs"].items():
                results.setdefault(tuple_key(k), []).extend(runs)
        for runs in results.values():
            runs.sort(key=lambda r: r["seed"])
        t_acc = parts[0]["teacher_accuracy"]
        seeds = len(next(iter(results.values())))
        return report(results, t_acc, seeds, args.set, args.tag, args.data, plot_it=True)
    params = with_overrides(load_params(args.params), parse_sets(args.set))
    task = load_task(args.data)
    teachers, hashes = load_teachers([args.teacher], task.num_classes, "cpu")  # type: ignore[arg-type]
    x, y = task["test"]
    t_acc = classification_metrics(predict(teachers[0], x), y)["accuracy"]
    results: dict = {}
    for fraction in args.fractions:
        for name in ([] if args.no_alone else ["alone"]) + args.methods:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                r = run(
                    params,
                    task,
                    teachers,
                    hashes,
                    None if name == "alone" else name,
                    seed,
                    fraction,
                )
                results.setdefault((fraction, name), []).append(r)
                print(f"fraction {fraction} {name} seed {seed}: acc {r['accuracy']:.4f} "
                      f"({r['seconds']:.0f}s)", flush=True)  # fmt: skip
    if args.no_alone:  # a shard: raw runs only; `--merge` builds the table
        runs = {f"{f}/{n}": rs for (f, n), rs in results.items()}
        save(f"quality{args.tag}", {"teacher_accuracy": t_acc, "set": args.set, "runs": runs})
        return
    report(results, t_acc, args.seeds, args.set, args.tag, args.data, len(args.fractions) > 1)


def paired(runs: list[dict], others: list[dict], y) -> tuple[str, str]:
    """Mean difference with a bootstrap CI over images (each image's correctness averaged over
    the seeds) and McNemar's exact p for each seed's pair of models."""
    import numpy as np

    from kdflow.stats import mcnemar_exact, paired_bootstrap

    right = [(np.array(a["predictions"]) == y, np.array(b["predictions"]) == y)
             for a, b in zip(runs, others, strict=True)]  # fmt: skip
    ps = [mcnemar_exact(a, b)[2] for a, b in right]
    low, high = paired_bootstrap(
        np.mean([a for a, _ in right], 0), np.mean([b for _, b in right], 0)
    )
    diff = float(np.mean([a.mean() - b.mean() for a, b in right]))
    ci = f"{diff * 100:+.2f} ({low * 100:+.2f} to {high * 100:+.2f})"
    return ci, ", ".join(f"{p:.2g}" for p in ps)


def tuple_key(key: str) -> tuple[float, str]:
    fraction, name = key.split("/", 1)
    return float(fraction), name


def report(
    results: dict, t_acc: float, seeds: int, sets: list, tag: str, data: str, plot_it: bool
) -> None:
    """Table (with paired tests on the pooled seeds), JSON and, for several fractions, a plot."""
    rows = summarise(results, t_acc)
    y = load_task(data)["test"][1].numpy()
    for r in rows:  # each method against the student alone and against kd, seed by seed
        name = r["model"].removeprefix("student + ")
        for base, col in (("alone", "vs alone"), ("kd", "vs kd")):
            other = results.get((r["label fraction"], base))
            if name in ("student alone", base) or other is None:
                r[f"{col} (pt, 95% CI)"] = r[f"{col}: McNemar p per seed"] = ""
                continue
            r[f"{col} (pt, 95% CI)"], r[f"{col}: McNemar p per seed"] = paired(
                results[(r["label fraction"], name)], other, y
            )
    print()
    print(table([{k: v for k, v in r.items() if k not in ("mean", "std")} for r in rows]))
    payload = {"teacher_accuracy": t_acc, "seeds": seeds, "set": sets, "rows": rows,
               "runs": {f"{f}/{n}": rs for (f, n), rs in results.items()}}  # fmt: skip
    path = save(f"quality{tag}", payload)
    if plot_it:
        plot(rows, t_acc, RESULTS / f"quality{tag}.png")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
