"""DVC stage `evaluate`: compare teacher, student and distilled student, and every transfer.

Writes the metrics file, the report (summary.md and plots/) and the distilled student exported
to ONNX (parity-checked against PyTorch) and TorchScript; logs one MLflow run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kdflow import evaluate as ev
from kdflow.config import load_params
from kdflow.errors import run_main
from kdflow.io import atomic_write_json, sha256_file
from kdflow.tasks import load_task
from kdflow.tracking import Tracker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", required=True)
    ap.add_argument("--old", required=True, type=Path, help="prepared old task")
    ap.add_argument("--new", required=True, type=Path, help="prepared new task")
    for name in ev.OLD_MODELS:
        ap.add_argument(f"--{name}", required=True, type=Path, help=f"{name} checkpoint")
    ap.add_argument("--transfers", required=True, type=Path, help="folder of transfer models")
    ap.add_argument("--curves", required=True, type=Path, help="folder of per-epoch CSVs")
    ap.add_argument("--metrics", required=True, type=Path)
    ap.add_argument("--reports", required=True, type=Path, help="summary.md and plots/")
    ap.add_argument("--export", required=True, type=Path, help="ONNX and TorchScript files")
    ap.add_argument(
        "--timings", required=True, type=Path, help="this run's CPU timings (unversioned)"
    )
    args = ap.parse_args()
    t_start = time.perf_counter()
    params = load_params(args.params)
    ecfg, tcfg = params.evaluate, params.transfer
    old, new = load_task(args.old), load_task(args.new)
    old_paths = {name: getattr(args, name) for name in ev.OLD_MODELS}
    tr_paths = {s: args.transfers / f"{s}.pt" for s in tcfg.strategies}
    ev.require_files({**old_paths, **tr_paths})
    hashes = {f"model_{k}": sha256_file(p)[:16] for k, p in {**old_paths, **tr_paths}.items()}
    hashes.update(data_old=old.content_hash, data_new=new.content_hash)
    logged = {"evaluate": ecfg, "transfer": {"source": tcfg.source, "strategies": tcfg.strategies}}
    tracker = Tracker(
        params.tracking, "evaluate", logged, hashes, pipeline_params=params
    ).preflight()
    curves = ev.curve_files(args.curves, tcfg.strategies)

    with tracker:
        old_res = ev.evaluate_old_task(old_paths, old, ecfg)
        source_acc = old_res.rows[tcfg.source]["accuracy"]
        tr = ev.evaluate_transfers(tr_paths, new, old, source_acc, ecfg.ece_bins)
        exported = ev.export_model(
            old_res.models["distilled"], old["test"][0], args.export, ecfg.onnx
        )
        parity = exported["parity"]
        tests = ev.significance(old_res, tr, old["test"][1], new["test"][1])
        metrics = ev.metrics_document(old_res, tr, parity, significance=tests)
        summary = ev.write_report(
            args.reports, old_res, tr, old, new, curves, tcfg.source, parity, significance=tests
        )
        atomic_write_json(args.metrics, metrics)
        timings = ev.write_timings(args.timings, old_res)
        tracker.log_summary(metrics)
        tracker.log_summary(timings)
        tracker.log_artifact(args.timings, "timings")
        tracker.set_tags({"kdflow.best_transfer": tr.best})
        for path in (args.metrics, summary):
            tracker.log_artifact(path)
        tracker.log_artifact(args.reports / "plots", "plots")
        for path in exported["files"].values():
            tracker.log_artifact(path, "export")
        # every stage's run in this pipeline's tree, also those DVC skipped or restored
        models = [*old_paths.values(), *tr_paths.values()]
        tracker.link_pipeline(models)
        tracker.set_lock_alias(models)
        ev.check_parity(parity, exported["files"].get("onnx"))  # last: the report is there to see

    d, t = old_res.rows["distilled"], old_res.rows["teacher"]
    print(
        f"[evaluate] distilled: accuracy {d['accuracy']:.4f} (teacher {t['accuracy']:.4f}), "
        f"{d['compression']:.1f}x fewer params, {d['speedup']:.2f}x faster at batch 1 "
        f"({old_res.timing['threads']} threads); best transfer {tr.best} "
        f"{tr.new_task[tr.best]['accuracy']:.4f}; {time.perf_counter() - t_start:.1f}s"
    )


if __name__ == "__main__":
    run_main(main, exit_now=True)
