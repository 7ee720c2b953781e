"""Turn evaluation numbers into a Markdown summary, PNG figures and CSV data for DVC plots.

Inputs are plain dicts and tensors, so the report can be rebuilt (or tested) without models.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
from torch import Tensor

from kdflow.io import atomic_write_text

DASH = "—"

# --------------------------------------------------------------------------- tables

# key -> (column title, format); None values show as a dash.
OLD_COLUMNS: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy", ".4f"),
    "nll": ("NLL", ".4f"),
    "ece": ("ECE", ".4f"),
    "agreement": ("agreement w/ teacher", ".4f"),
    "params": ("params", ",d"),
    "compression": ("compression ×", ".1f"),
    "flops": ("MFLOPs/img", ".3f"),
    "size_kb": ("size KB", ".1f"),
    "latency_ms": ("latency ms (b=1)", ".3f"),
    "throughput": ("throughput img/s", ",.0f"),
    "speedup": ("speed-up × (b=1)", ".2f"),
    "throughput_ratio": ("throughput ×", ".2f"),
}


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, bool):
        return str(value).lower()
    if spec.endswith("d"):
        return format(int(value), spec)
    return format(float(value), spec)


def old_task_table(rows: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per old-task model with readable column names, values formatted as text."""
    records = []
    for name, r in rows.items():
        rec: dict[str, Any] = {"model": name}
        for key, (label, spec) in OLD_COLUMNS.items():
            v = r.get(key)
            rec[label] = _fmt(v / 1e6 if key == "flops" and v is not None else v, spec)
        records.append(rec)
    return pd.DataFrame.from_records(records)


def transfer_table(
    new_task: Mapping[str, Mapping[str, Any]], retention: Mapping[str, Mapping[str, Any]]
) -> pd.DataFrame:
    """One row per strategy: new-task quality and what is left of the old task."""
    records = []
    for name, r in new_task.items():
        keep = retention.get(name, {})
        records.append(
            {
                "strategy": name,
                "new-task accuracy": _fmt(r.get("accuracy")),
                "old-task accuracy (retention)": _fmt(keep.get("old_task_accuracy")),
                "retained share": _fmt(keep.get("retention")),
                "old-task drop": _fmt(keep.get("old_task_drop")),
                "ECE": _fmt(r.get("ece")),
                "NLL": _fmt(r.get("nll")),
            }
        )
    return pd.DataFrame.from_records(records)


def to_markdown(df: pd.DataFrame) -> str:
    """A Markdown table of pre-formatted text: first column left, the numbers right-aligned."""
    align = ("left",) + ("right",) * (len(df.columns) - 1)
    return df.to_markdown(index=False, disable_numparse=True, colalign=align)


def per_class_table(
    per_class: Mapping[str, Sequence[float]], class_names: list[str]
) -> pd.DataFrame:
    """Per-class accuracy, one row per model, one column per class."""
    records = [
        {"model": name, **{c: _fmt(v) for c, v in zip(class_names, accs, strict=True)}}
        for name, accs in per_class.items()
    ]
    return pd.DataFrame.from_records(records)


def headline(
    rows: Mapping[str, Mapping[str, Any]],
    throughput_batch: int,
    model: str = "distilled",
    reference: str = "teacher",
) -> str:
    """The sentence a reader wants first: how much smaller and faster, measured how."""
    r, t = rows[model], rows[reference]
    return (
        f"The {model} student has {r['compression']:.1f}× fewer parameters than the {reference} "
        f"({r['params']:,} vs {t['params']:,}) and runs {r['speedup']:.2f}× faster on the CPU at "
        f"batch 1 ({r['latency_ms']:.3f} ms vs {t['latency_ms']:.3f} ms) with "
        f"{r['throughput_ratio']:.2f}× the throughput at batch {throughput_batch} "
        f"({r['throughput']:,.0f} vs {t['throughput']:,.0f} images/s), measured with "
        f"{int(r['threads'])} CPU thread(s); it reaches {r['accuracy']:.2%} accuracy against the "
        f"{reference}'s {t['accuracy']:.2%} and agrees with it on {r.get('agreement', 1.0):.2%} "
        "of the test images."
    )


def render_summary(
    *,
    old_rows: Mapping[str, Mapping[str, Any]],
    class_names: list[str],
    per_class: Mapping[str, Sequence[float]] | None = None,
    new_task: Mapping[str, Mapping[str, Any]] | None = None,
    retention: Mapping[str, Mapping[str, Any]] | None = None,
    transfer_source: str | None = None,
    onnx: Mapping[str, Any] | None = None,
    timing: Mapping[str, Any] | None = None,
    plots: Sequence[str] = (),
) -> str:
    """The whole ``summary.md`` as a string."""
    parts = ["# kdflow evaluation", ""]
    parts += ["## Old task: teacher, student alone, distilled student", ""]
    if "distilled" in old_rows and "teacher" in old_rows:
        batch = int(timing["throughput_batch"]) if timing else 0
        parts += [headline(old_rows, batch), ""]
    parts += [to_markdown(old_task_table(old_rows)), ""]
    if timing:
        parts += [
            f"Timings: median of {timing['latency_repeats']} runs after warm-up, "
            f"`torch.inference_mode()`, {timing['threads']} thread(s), throughput at batch "
            f"{timing['throughput_batch']}, models timed in turns; 1-minute load average "
            f"{timing.get('load_avg_1m', float('nan')):.2f} on {os.cpu_count()} CPU(s) "
            "(higher than the CPU count means the timings were taken on a busy machine). "
            "Compression and speed-ups are relative to the teacher.",
            "",
        ]
    if per_class:
        parts += ["### Per-class accuracy (old task)", ""]
        parts += [to_markdown(per_class_table(per_class, class_names)), ""]
    if new_task:
        src = f" (all start from the {transfer_source} except scratch)" if transfer_source else ""
        parts += [f"## Transfer to the new task{src}", ""]
        parts += [to_markdown(transfer_table(new_task, retention or {})), ""]
        parts += [
            "Retention is the old head's accuracy on the old task after transfer "
            f"({DASH} for scratch, which has no trained old head); retained share is it divided "
            "by the source model's old-task accuracy, drop is the difference.",
            "",
        ]
    if onnx:
        ok = onnx["max_abs_diff"] < 1e-4 and onnx["mismatches"] == 0
        parts += [
            "## Export",
            "",
            f"ONNX parity ({onnx.get('exporter', 'onnx')} exporter, onnxruntime CPU, "
            f"{onnx['images']:,} test images): max |logit difference| "
            f"{onnx['max_abs_diff']:.2e}, prediction agreement {onnx['agreement']:.2%} "
            f"({onnx['mismatches']} differ) — {'pass' if ok else 'FAIL'} (threshold 1e-4).",
            "",
        ]
    if plots:
        parts += ["## Plots", ""] + [f"- [{p}]({p})" for p in plots] + [""]
    return "\n".join(parts)


def write_summary(path: str | Path, text: str) -> Path:
    return atomic_write_text(path, text)


# --------------------------------------------------------------------------- CSV for DVC plots


def confusion_csv(y_true: Tensor, y_pred: Tensor, class_names: list[str]) -> str:
    """``actual,predicted`` per image, class names as values (DVC's confusion template)."""
    names = pd.Series(class_names)
    frame = pd.DataFrame(
        {"actual": names[y_true.numpy()].values, "predicted": names[y_pred.numpy()].values}
    )
    return frame.to_csv(index=False, lineterminator="\n")


def reliability_csv(bins_by_model: Mapping[str, list[dict[str, float]]]) -> str:
    """``model,bin,confidence,accuracy,count`` for the bins that hold images."""
    frame = pd.DataFrame.from_records(
        [{"model": m, **r} for m, rows in bins_by_model.items() for r in rows if r["count"]],
        columns=["model", "bin", "confidence", "accuracy", "count"],
    )
    return frame.to_csv(index=False, float_format="%.6f", lineterminator="\n")


# --------------------------------------------------------------------------- figures


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion(cm: Tensor, class_names: list[str], title: str, path: str | Path) -> Path:
    """Confusion matrix with counts (scikit-learn's display): where the model confuses classes."""
    from sklearn.metrics import ConfusionMatrixDisplay

    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.5 + 0.75 * k, 1.0 + 0.7 * k))
    disp = ConfusionMatrixDisplay(cm.numpy(), display_labels=class_names)
    disp.plot(ax=ax, cmap="Blues", xticks_rotation=45, values_format="d", colorbar=True)
    ax.set_title(title)
    return _save(fig, path)


def plot_reliability(bins_by_model: Mapping[str, list[dict[str, float]]], path: str | Path) -> Path:
    """Accuracy against confidence per bin for several models; the diagonal is calibrated."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for model, rows in bins_by_model.items():
        pts = [(r["confidence"], r["accuracy"]) for r in rows if r["count"]]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", ms=4, label=model)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_title("Reliability (old task)")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_accuracy_latency(rows: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Accuracy against CPU latency, point area proportional to parameter count."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    biggest = max(float(r["params"]) for r in rows.values())
    for name, r in rows.items():
        size = 40 + 1200 * float(r["params"]) / biggest
        ax.scatter(r["latency_ms"], r["accuracy"], s=size, alpha=0.6)
        ax.annotate(
            f"{name}\n{int(r['params']):,} params",
            (r["latency_ms"], r["accuracy"]),
            textcoords="offset points",
            xytext=(8, 6),
            fontsize=8,
        )
    ax.set_xlabel("CPU latency at batch 1 (ms)")
    ax.set_ylabel("old-task test accuracy")
    ax.set_title("Accuracy vs latency (area ~ parameters)")
    ax.margins(0.25)
    return _save(fig, path)


def plot_learning_curves(csvs: Mapping[str, str | Path], path: str | Path) -> Path | None:
    """One subplot per stage with every accuracy-like column of its per-epoch CSV."""
    frames = {name: pd.read_csv(p) for name, p in csvs.items() if Path(p).is_file()}
    if not frames:
        return None
    n = len(frames)
    cols = min(n, 3)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    for ax, (name, df) in zip(axes.flat, frames.items(), strict=False):
        x = df["epoch"] if "epoch" in df else range(1, len(df) + 1)
        for col in df.columns:
            if col.endswith("accuracy") or col == "agreement":
                ok = df[col].notna()  # sparse columns (test accuracy every few epochs)
                ax.plot(pd.Series(x)[ok.values], df[col][ok], marker=".", label=col)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylim(top=1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, path)
