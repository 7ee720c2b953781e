"""The evaluate stage's work as a few calls: old task, transfers, export, report.

Each call takes models or paths and returns plain dicts, so the stage script is glue and a
notebook can call the same functions.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdflow import cost, figures, quality, report, stats
from kdflow.checkpoint import load_model
from kdflow.config import EvaluateConfig
from kdflow.errors import KdflowError
from kdflow.export import PARITY_TOL, export_onnx, export_torchscript, onnx_parity
from kdflow.io import atomic_dir, atomic_write_text
from kdflow.tasks import Task
from kdflow.transfer import old_task_kept

OLD_MODELS = ("teacher", "student", "distilled")
TIMED = ("latency_ms", "throughput", "speedup", "throughput_ratio", "threads")  # vary run to run


@dataclass
class OldTask:
    """Quality and cost of teacher, student alone and distilled student on the old task."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_class: dict[str, list[float]] = field(default_factory=dict)
    reliability: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    confusions: dict[str, Tensor] = field(default_factory=dict)
    logits: dict[str, Tensor] = field(default_factory=dict)
    models: dict[str, nn.Module] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)


@dataclass
class Transfers:
    """Each strategy's new-task quality and what it left of the old task."""

    new_task: dict[str, dict[str, float]] = field(default_factory=dict)
    retention: dict[str, dict[str, Any]] = field(default_factory=dict)
    confusions: dict[str, Tensor] = field(default_factory=dict)
    logits: dict[str, Tensor] = field(default_factory=dict)

    @property
    def best(self) -> str:
        return max(self.new_task, key=lambda s: self.new_task[s]["accuracy"])


def require_files(paths: dict[str, Path]) -> None:
    """Each model evaluate compares, present; the three old-task roles named."""
    missing = [n for n in OLD_MODELS if n not in paths]
    if missing:
        raise KdflowError(f"evaluate needs --model {missing[0]}=PATH (have {', '.join(paths)})")
    for what, path in paths.items():
        if not Path(path).is_file():
            raise KdflowError(f"{what} model {path} not found; run the stage that produces it")


def evaluate_old_task(paths: dict[str, Path], task: Task, cfg: EvaluateConfig) -> OldTask:
    """Quality on the test split (predictions use every core), then timings on pinned threads."""
    out, (x, y) = OldTask(), task["test"]
    teacher_logits = None
    for name, path in paths.items():
        model, _ = load_model(path, f"{name} model", expect_classes=task.num_classes)
        row, logits = quality.evaluate_classifier(model, x, y, cfg.ece_bins, teacher_logits)
        if teacher_logits is None:  # the first model is the teacher: it agrees with itself
            teacher_logits = logits
            row.update(quality.agreement_metrics(logits, logits))
        out.rows[name], out.logits[name], out.models[name] = row, logits, model
        out.per_class[name] = quality.per_class_accuracy(logits, y)
        out.reliability[name] = quality.reliability_bins(logits, y, cfg.ece_bins)
        out.confusions[name] = quality.confusion_matrix(logits, y)
    default_threads = cost.set_threads(None)
    threads = cost.set_threads(cfg.threads)
    costs = cost.cost_metrics(out.models, x, paths, cfg.latency_repeats, cfg.throughput_batch)
    cost.set_threads(default_threads)
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(
            f"[evaluate] warning: load average {load:.1f} on {os.cpu_count()} CPUs while "
            "timing: latencies are noisy; set evaluate.threads: 1 or re-run on an idle machine",
            file=sys.stderr,
        )
    for name, row in out.rows.items():
        row.update(costs[name])
    for row in out.rows.values():
        row.update(cost.relative_to(out.rows["teacher"], row))
    out.timing = {
        "threads": threads,
        "latency_repeats": cfg.latency_repeats,
        "throughput_batch": cfg.throughput_batch,
        "load_avg_1m": load,  # above the CPU count: timings were taken on a busy machine
    }
    return out


def evaluate_transfers(
    paths: dict[str, Path],
    new: Task,
    old: Task,
    source_accuracy: float,
    bins: int,
    source: str | None = None,
) -> Transfers:
    """New-task quality of each transfer and the old-task accuracy its old head kept (against
    ``source_accuracy``, that of ``source``: a model carried from another source is refused)."""
    out = Transfers()
    for s, path in paths.items():
        model, ckpt = load_model(path, f"transfer model {s}")
        n_new = int(ckpt["spec"].get("new_classes", -1))
        if n_new != new.num_classes:
            raise KdflowError(
                f"transfer model {path} predicts {n_new} new classes but the new task has "
                f"{new.num_classes}; re-run the transfer stage (dvc repro)"
            )
        made_from = None if ckpt.get("from_scratch", False) else ckpt.get("source")
        if source and made_from and made_from != source:
            raise KdflowError(
                f"transfer model {path} was carried from the {made_from}, not the {source}; "
                "check --transfer-model or re-run the transfer stages (dvc repro)"
            )
        row, logits = quality.evaluate_classifier(model, *new["test"], bins)
        out.new_task[s], out.logits[s] = row, logits
        out.confusions[s] = quality.confusion_matrix(logits, new["test"][1])
        before = None if ckpt.get("from_scratch", False) else source_accuracy
        kept = old_task_kept(model, old["test"], before)
        out.retention[s] = {"old_task_accuracy": kept["accuracy"], "retention": kept["retention"],
                            "old_task_drop": kept["old_task_drop"]}  # fmt: skip
    return out


def export_model(model: nn.Module, x: Tensor, export_dir: Path, onnx: bool) -> dict[str, Any]:
    """ONNX (parity-checked on all of ``x``) and TorchScript files of ``model``."""
    files = {"torchscript": export_dir / "distilled.ts.pt"}
    parity: dict[str, Any] = {}
    if onnx:
        files["onnx"] = export_dir / "distilled.onnx"
        exporter = export_onnx(model, x[:2], files["onnx"])
        parity = {**onnx_parity(files["onnx"], model, x), "exporter": exporter}
        parity["size_kb"] = cost.size_on_disk_kb(files["onnx"])
    export_torchscript(model, x[:2], files["torchscript"])
    return {"files": files, "parity": parity or None}


def check_parity(parity: dict[str, Any] | None, path: Path) -> None:
    """Fail the stage when ONNX and PyTorch disagree beyond ``PARITY_TOL``."""
    if parity and (parity["max_abs_diff"] >= PARITY_TOL or parity["mismatches"]):
        raise KdflowError(
            f"ONNX export {path} does not match PyTorch: max |logit difference| "
            f"{parity['max_abs_diff']:.3g} (must be < {PARITY_TOL:g}), "
            f"{parity['mismatches']} of {parity['images']} predictions differ"
        )


def significance(old: OldTask, tr: Transfers, old_y: Tensor, new_y: Tensor) -> dict[str, Any]:
    """Paired comparisons on the same test images: is each difference real?

    The distilled student against the student alone (and the teacher against the student, the
    gap distillation tries to close) on the old task; each transfer against scratch on the new.
    """

    def pred(logits: dict[str, Tensor], name: str) -> Tensor:
        return logits[name].argmax(1)

    out = {
        "distilled_vs_student": stats.compare(
            pred(old.logits, "distilled"), pred(old.logits, "student"), old_y
        ),
        "teacher_vs_student": stats.compare(
            pred(old.logits, "teacher"), pred(old.logits, "student"), old_y
        ),
    }
    if "scratch" in tr.logits:
        for s in tr.logits:
            if s != "scratch":
                out[f"{s}_vs_scratch"] = stats.compare(
                    pred(tr.logits, s), pred(tr.logits, "scratch"), new_y
                )
    return out


def _round(obj: Any) -> Any:
    """Six significant digits: enough for any comparison, short enough to read in dvc."""
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    return obj


def untimed(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in TIMED}


def write_timings(folder: Path, old: OldTask) -> dict[str, Any]:
    """This run's CPU timings, outside the DVC-versioned files: JSON, Markdown and a plot."""
    doc = _round({"old_task": {n: {k: r[k] for k in TIMED if k in r} for n, r in old.rows.items()},
                  "timing": old.timing})  # fmt: skip
    atomic_write_text(folder / "evaluate.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")
    atomic_write_text(folder / "evaluate.md", report.timings_markdown(old.rows, old.timing))
    figures.plot_accuracy_latency(old.rows, folder / "accuracy_vs_latency.png")
    return doc


def metrics_document(
    old: OldTask, tr: Transfers, parity: dict[str, Any] | None, **extra: Any
) -> dict[str, Any]:
    """What goes into metrics/evaluate.json (rounded to 6 significant digits)."""
    doc: dict[str, Any] = {
        "old_task": {n: untimed(r) for n, r in old.rows.items()},
        "new_task": tr.new_task,
        "transfer": tr.retention,
        **extra,
    }
    if parity is not None:
        doc["onnx"] = {k: v for k, v in parity.items() if k != "exporter"}
    return _round(doc)


def write_report(
    reports_dir: Path,
    old: OldTask,
    tr: Transfers,
    old_task: Task,
    new_task: Task,
    curves: dict[str, Path],
    transfer_source: str,
    parity: dict[str, Any] | None,
    **sections: Any,
) -> Path:
    """reports/plots/ (PNG and the CSVs of DVC's plots) and reports/summary.md."""
    best = tr.best
    with atomic_dir(reports_dir / "plots") as tmp:
        for name, cm in old.confusions.items():
            figures.plot_confusion(
                cm, old_task.class_names, f"{name} (old task)", tmp / f"confusion_{name}.png"
            )
        figures.plot_confusion(
            tr.confusions[best],
            new_task.class_names,
            f"transfer: {best} (new task)",
            tmp / f"confusion_transfer_{best}.png",
        )
        figures.plot_reliability(old.reliability, tmp / "reliability.png")
        figures.plot_learning_curves(curves, tmp / "learning_curves.png")
        y = old_task["test"][1]
        csv = report.confusion_csv(y, old.logits["distilled"].argmax(1), old_task.class_names)
        atomic_write_text(tmp / "confusion_distilled.csv", csv)
        atomic_write_text(tmp / "reliability.csv", report.reliability_csv(old.reliability))
        written = sorted(f"plots/{p.name}" for p in tmp.glob("*.png"))
    summary = report.render_summary(
        old_rows={n: untimed(r) for n, r in old.rows.items()},
        class_names=old_task.class_names,
        per_class=old.per_class,
        new_task=tr.new_task,
        retention=tr.retention,
        transfer_source=transfer_source,
        onnx=parity,
        timing=old.timing,
        plots=written,
        **sections,
    )
    return atomic_write_text(reports_dir / "summary.md", summary)
