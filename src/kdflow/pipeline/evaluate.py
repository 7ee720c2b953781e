"""Stage ``evaluate``: teacher, student and distilled student side by side, every transfer (from
every source), paired significance tests, the report and the exported student; one MLflow run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from kdflow import evaluate as ev
from kdflow.errors import KdflowError
from kdflow.io import atomic_write_json, sha256_file
from kdflow.params import load_params
from kdflow.sources import source_table
from kdflow.strategies import BASELINE
from kdflow.tasks import load_task
from kdflow.tracking import Tracker


@dataclass(frozen=True)
class EvaluatePaths:
    """What evaluate reads and writes; dvc.yaml names every file (``{source}``/``{strategy}``
    patterns for the transfers that start from a source model)."""

    models: dict[str, Path]  # teacher, student, distilled
    transfer_model: str  # e.g. models/transfer/{source}-{strategy}.pt
    scratch_model: Path  # the from-scratch baseline (no source)
    curves: dict[str, Path]  # per-epoch CSVs by panel title
    transfer_curve: str  # e.g. plots/transfer/{source}-{strategy}.csv
    scratch_curve: Path
    metrics: Path
    reports: Path
    export: Path
    timings: Path

    def transfers(self, sources: list[str], strategies: list[str]) -> dict[str, dict[str, Path]]:
        """Each source's transfer models by strategy (the patterns filled in)."""
        if len(sources) > 1 and "{source}" not in self.transfer_model:
            raise KdflowError(
                f"--transfer-model {self.transfer_model} has no {{source}}: the sources "
                f"{', '.join(sources)} would all read the same files"
            )
        return {src: {s: Path(self.transfer_model.format(source=src, strategy=s))
                      for s in strategies} for src in sources}  # fmt: skip

    def transfer_curves(self, sources: list[str], strategies: list[str]) -> dict[str, Path]:
        """The transfers' per-epoch CSVs by panel title (``transfer/<source>-<strategy>``)."""
        curves = {f"transfer/{BASELINE}": self.scratch_curve}
        for src in sources:
            for s in strategies:
                curves[f"transfer/{src}-{s}"] = Path(
                    self.transfer_curve.format(source=src, strategy=s)
                )
        return curves


def run_evaluate(params_file: str, old_dir: str, new_dir: str, paths: EvaluatePaths) -> None:
    t_start = time.perf_counter()
    params = load_params(params_file)
    ecfg, tcfg = params.evaluate, params.transfer
    old, new = load_task(old_dir), load_task(new_dir)
    old_paths, first = dict(paths.models), tcfg.source[0]
    by_source = paths.transfers(tcfg.source, tcfg.strategies)
    # the per-strategy table (and its tests against scratch) is the first source's, as before
    tr_paths = {BASELINE: paths.scratch_model, **by_source[first]}
    every = {BASELINE: paths.scratch_model, **{f"{src}-{s}": p for src in tcfg.source
                                               for s, p in by_source[src].items()}}  # fmt: skip
    curves = {**paths.curves, **paths.transfer_curves(tcfg.source, tcfg.strategies)}
    ev.require_files({**old_paths, **every})
    hashes = {f"model_{k}": sha256_file(p)[:16] for k, p in {**old_paths, **every}.items()}
    hashes.update(data_old=old.content_hash, data_new=new.content_hash)
    logged = {"evaluate": ecfg, "transfer": {"source": tcfg.source, "strategies": tcfg.strategies}}
    tracker = Tracker(  # the pipeline's last stage: its parent run ends FINISHED with it
        params.tracking, "evaluate", logged, hashes, pipeline_params=params,
        completes_pipeline=True,
    ).preflight()  # fmt: skip

    with tracker:
        old_res = ev.evaluate_old_task(old_paths, old, ecfg)
        transfers = {
            src: ev.evaluate_transfers(
                tr_paths if src == first else by_source[src], new, old,
                old_res.rows[src]["accuracy"], ecfg.ece_bins, source=src,
            )
            for src in tcfg.source
        }  # fmt: skip
        tr = transfers[first]
        table = source_table(transfers, tcfg.strategies, new["test"][1])
        exported = ev.export_model(
            old_res.models["distilled"], old["test"][0], paths.export, ecfg.onnx
        )
        parity = exported["parity"]
        tests = ev.significance(old_res, tr, old["test"][1], new["test"][1])
        metrics = ev.metrics_document(
            old_res, tr, parity, significance=tests, transfer_sources=table
        )
        summary = ev.write_report(
            paths.reports, old_res, tr, old, new, curves, first, parity, significance=tests,
            transfer_sources=table,
        )  # fmt: skip
        atomic_write_json(paths.metrics, metrics)
        timings = ev.write_timings(paths.timings, old_res)
        tracker.log_summary(metrics)
        tracker.log_summary(timings)
        tracker.log_artifact(paths.timings, "timings")
        tracker.set_tags({"kdflow.best_transfer": tr.best})
        for path in (paths.metrics, summary):
            tracker.log_artifact(path)
        tracker.log_artifact(paths.reports / "plots", "plots")
        for path in exported["files"].values():
            tracker.log_artifact(path, "export")
        # every stage's run in this pipeline's tree, also those DVC skipped or restored
        models = [*old_paths.values(), *every.values()]
        tracker.link_pipeline(models)
        tracker.set_lock_alias(models)
        tracker.log_datasets(old, ["test"])
        tracker.log_datasets(new, ["test"])
        # the champion alias moves only to a significantly better distilled student
        distilled = old_res.logits["distilled"].argmax(1)
        decision = tracker.promote(old_paths["distilled"], distilled, old["test"], old.content_hash)
        ev.check_parity(parity, exported["files"].get("onnx"))  # last: the report is there to see

    d, t = old_res.rows["distilled"], old_res.rows["teacher"]
    print(
        f"[evaluate] distilled: accuracy {d['accuracy']:.4f} (teacher {t['accuracy']:.4f}), "
        f"{d['compression']:.1f}x fewer params, {d['speedup']:.2f}x faster at batch 1 "
        f"({old_res.timing['threads']} threads); best transfer {tr.best} "
        f"{tr.new_task[tr.best]['accuracy']:.4f}; {time.perf_counter() - t_start:.1f}s"
    )
    if decision is not None:
        print(f"[evaluate] {decision.line()}")
