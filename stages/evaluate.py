"""DVC stage `evaluate`: compare teacher, student and distilled student, and every transfer.

Writes metrics/evaluate.json, reports/summary.md, reports/plots/ and the distilled student
exported to ONNX (parity-checked against PyTorch) and TorchScript; logs one MLflow run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from kdflow import evaluate as ev
from kdflow import report
from kdflow.checkpoint import load_model
from kdflow.config import flatten, load_params
from kdflow.errors import KdflowError, run_main
from kdflow.io import atomic_dir, atomic_write_json, atomic_write_text, sha256_file
from kdflow.runner import flat_metrics
from kdflow.tasks import load_task
from kdflow.tracking import Tracker

OLD_MODELS = {"teacher": "teacher.pt", "student": "student.pt", "distilled": "distilled.pt"}
CURVES = {"teacher": "teacher.csv", "student": "student.csv", "distill": "distill.csv"}
PARITY_TOL = 1e-4


def _round(obj: Any) -> Any:
    """Six significant digits: enough for any comparison, short enough to read in dvc."""
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    return obj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/prepared", help="folder with old/ and new/")
    ap.add_argument("--models", default="models")
    ap.add_argument("--curves", default="plots", help="per-epoch CSVs of the training stages")
    ap.add_argument("--metrics", default="metrics/evaluate.json")
    ap.add_argument("--reports", default="reports")
    args = ap.parse_args()
    t_start = time.perf_counter()
    params = load_params(args.params)
    ecfg, tcfg = params.evaluate, params.transfer
    models_dir, reports_dir = Path(args.models), Path(args.reports)
    old, new = load_task(Path(args.data) / "old"), load_task(Path(args.data) / "new")
    old_paths = {name: models_dir / f for name, f in OLD_MODELS.items()}
    tr_paths = {s: models_dir / "transfer" / f"{s}.pt" for s in tcfg.strategies}
    for what, path in [*old_paths.items(), *tr_paths.items()]:
        if not path.is_file():
            raise KdflowError(f"{what} model {path} not found; run the stage that produces it")
    hashes = {f"model_{k}": sha256_file(p)[:16] for k, p in {**old_paths, **tr_paths}.items()}
    hashes.update(data_old=old.content_hash, data_new=new.content_hash)
    logged = {"evaluate": ecfg, "transfer": {"source": tcfg.source, "strategies": tcfg.strategies}}
    tracker = Tracker(params.tracking, "evaluate", flatten(logged), hashes).preflight()
    bins = ecfg.ece_bins
    x_old, y_old = old["test"]
    x_new, y_new = new["test"]

    with tracker:
        # ---------------------------------------------------------------- old task
        rows: dict[str, dict[str, Any]] = {}
        per_class: dict[str, list[float]] = {}
        reliability: dict[str, list[dict[str, float]]] = {}
        confusions: dict[str, Any] = {}
        preds: dict[str, Any] = {}
        nets: dict[str, Any] = {}
        teacher_logits = None
        for name, path in old_paths.items():
            model, _ = load_model(path, f"{name} model", expect_classes=old.num_classes)
            quality, logits = ev.evaluate_classifier(model, x_old, y_old, bins, teacher_logits)
            if teacher_logits is None:
                teacher_logits = logits
                quality.update(ev.agreement_metrics(logits, logits))
            rows[name] = quality
            per_class[name] = ev.per_class_accuracy(logits, y_old)
            reliability[name] = ev.reliability_bins(logits, y_old, bins)
            confusions[name] = ev.confusion_matrix(logits, y_old)
            preds[name] = logits.argmax(1)
            nets[name] = model
        # the thread count is pinned for the timings only; predictions above use every core
        default_threads = ev.set_threads(None)
        threads = ev.set_threads(ecfg.threads)
        costs = ev.cost_metrics(nets, x_old, old_paths, ecfg.latency_repeats, ecfg.throughput_batch)
        ev.set_threads(default_threads)
        for name in rows:
            rows[name].update(costs[name])
        load = os.getloadavg()[0]
        if load > (os.cpu_count() or 1):
            print(
                f"[evaluate] warning: load average {load:.1f} on {os.cpu_count()} CPUs while "
                "timing: latencies are noisy; set evaluate.threads: 1 or re-run on an idle machine",
                file=sys.stderr,
            )
        for name in rows:
            rows[name].update(ev.relative_to(rows["teacher"], rows[name]))

        # ---------------------------------------------------------------- transfer
        new_task: dict[str, dict[str, float]] = {}
        retention: dict[str, dict[str, Any]] = {}
        tr_confusions: dict[str, Any] = {}
        source_acc = rows[tcfg.source]["accuracy"]
        for s, path in tr_paths.items():
            model, ckpt = load_model(path, f"transfer model {s}")
            n_new = int(ckpt["spec"].get("new_classes", -1))
            if n_new != new.num_classes:
                raise KdflowError(
                    f"transfer model {path} predicts {n_new} new classes but the new task has "
                    f"{new.num_classes}; re-run the transfer stage (dvc repro)"
                )
            quality, logits = ev.evaluate_classifier(model, x_new, y_new, bins)
            new_task[s] = quality
            tr_confusions[s] = ev.confusion_matrix(logits, y_new)
            scratch = bool(ckpt.get("from_scratch", ckpt.get("strategy", s) == "scratch"))
            if scratch:
                retention[s] = {"old_task_accuracy": None, "retention": None, "old_task_drop": None}
            else:
                kept = ev.evaluate_classifier(model.old_task(), x_old, y_old, bins)[0]["accuracy"]
                retention[s] = {
                    "old_task_accuracy": kept,
                    "retention": kept / source_acc if source_acc else None,
                    "old_task_drop": source_acc - kept,
                }

        # ---------------------------------------------------------------- export
        export_dir = models_dir / "export"
        onnx_path, ts_path = export_dir / "distilled.onnx", export_dir / "distilled.ts.pt"
        distilled = nets["distilled"]
        parity: dict[str, Any] | None = None
        if ecfg.onnx:
            exporter = ev.export_onnx(distilled, x_old[:2], onnx_path)
            parity = {**ev.onnx_parity(onnx_path, distilled, x_old), "exporter": exporter}
            parity["size_kb"] = ev.size_on_disk_kb(onnx_path)
        ev.export_torchscript(distilled, x_old[:2], ts_path)

        # ---------------------------------------------------------------- metrics
        timing = {
            "threads": threads,
            "latency_repeats": ecfg.latency_repeats,
            "throughput_batch": ecfg.throughput_batch,
            "load_avg_1m": load,  # above the CPU count: timings were taken on a busy machine
        }
        metrics: dict[str, Any] = {
            "old_task": {
                name: {k: v for k, v in r.items() if k != "threads"} for name, r in rows.items()
            },
            "new_task": new_task,
            "transfer": retention,
            "timing": timing,
        }
        if parity is not None:
            metrics["onnx"] = {k: v for k, v in parity.items() if k != "exporter"}
        metrics = _round(metrics)

        # ---------------------------------------------------------------- report
        plots_dir = reports_dir / "plots"
        best = max(new_task, key=lambda s: new_task[s]["accuracy"])
        curves = {n: Path(args.curves) / f for n, f in CURVES.items()}
        curves.update(
            {f"transfer/{s}": Path(args.curves) / "transfer" / f"{s}.csv" for s in tr_paths}
        )
        written: list[str] = []
        with atomic_dir(plots_dir) as tmp:
            for name, cm in confusions.items():
                report.plot_confusion(
                    cm, old.class_names, f"{name} (old task)", tmp / f"confusion_{name}.png"
                )
            report.plot_confusion(
                tr_confusions[best],
                new.class_names,
                f"transfer: {best} (new task)",
                tmp / f"confusion_transfer_{best}.png",
            )
            report.plot_reliability(reliability, tmp / "reliability.png")
            report.plot_accuracy_latency(rows, tmp / "accuracy_vs_latency.png")
            report.plot_learning_curves(curves, tmp / "learning_curves.png")
            atomic_write_text(
                tmp / "confusion_distilled.csv",
                report.confusion_csv(y_old, preds["distilled"], old.class_names),
            )
            atomic_write_text(tmp / "reliability.csv", report.reliability_csv(reliability))
            written = sorted(f"plots/{p.name}" for p in tmp.glob("*.png"))
        summary = report.render_summary(
            old_rows=rows,
            class_names=old.class_names,
            per_class=per_class,
            new_task=new_task,
            retention=retention,
            transfer_source=tcfg.source,
            onnx=parity,
            timing=timing,
            plots=written,
        )
        summary_path = report.write_summary(reports_dir / "summary.md", summary)
        atomic_write_json(args.metrics, metrics)

        tracker.log_metrics(flat_metrics(metrics))
        tracker.set_tags({"kdflow.best_transfer": best})
        tracker.log_artifact(args.metrics)
        tracker.log_artifact(summary_path)
        tracker.log_artifact(plots_dir, "plots")
        tracker.log_artifact(ts_path, "export")
        if ecfg.onnx:
            tracker.log_artifact(onnx_path, "export")

        # Checked last, so the report showing the numbers is there to look at.
        if parity is not None and (parity["max_abs_diff"] >= PARITY_TOL or parity["mismatches"]):
            raise KdflowError(
                f"ONNX export {onnx_path} does not match PyTorch: max |logit difference| "
                f"{parity['max_abs_diff']:.3g} (must be < {PARITY_TOL:g}), "
                f"{parity['mismatches']} of {parity['images']} predictions differ"
            )

    d = rows["distilled"]
    print(
        f"[evaluate] distilled: accuracy {d['accuracy']:.4f} (teacher "
        f"{rows['teacher']['accuracy']:.4f}), {d['compression']:.1f}x fewer params, "
        f"{d['speedup']:.2f}x faster at batch 1 ({threads} threads); best transfer {best} "
        f"{new_task[best]['accuracy']:.4f}; {time.perf_counter() - t_start:.1f}s"
    )


if __name__ == "__main__":
    run_main(main)
