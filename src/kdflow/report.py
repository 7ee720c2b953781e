"""Turn evaluation numbers into a Markdown summary and the CSV data of DVC's plots.

Inputs are plain dicts and tensors, so the report can be rebuilt (or tested) without models.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from torch import Tensor

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
    present = [k for k in OLD_COLUMNS if any(k in r for r in rows.values())]
    for name, r in rows.items():
        rec: dict[str, Any] = {"model": name}
        for key, (label, spec) in ((k, OLD_COLUMNS[k]) for k in present):
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


def significance_table(rows: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per paired comparison: difference, its 95% interval, McNemar's p, verdict."""
    records = []
    for name, r in rows.items():
        a, b = name.split("_vs_")
        records.append(
            {
                "comparison": f"{a} vs {b}",
                "accuracy": f"{r['accuracy_a']:.4f} vs {r['accuracy_b']:.4f}",
                "difference (pt)": f"{r['difference'] * 100:+.2f}",
                "95% CI (pt)": f"{r['ci95_low'] * 100:+.2f} to {r['ci95_high'] * 100:+.2f}",
                "only first right / only second right": f"{r['a_only_right']} / {r['b_only_right']}",
                "McNemar p": f"{r['mcnemar_p']:.3g}",
                "significant (p < 0.05)": "yes" if r["significant"] else "no",
            }
        )
    return pd.DataFrame.from_records(records)


def source_frame(table: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per strategy: new-task accuracy from each source, the paired test of the first
    source against each other one, and the old-task accuracy each kept (retained share)."""
    records = []
    for strategy, row in table.items():
        sources = [k for k in row if "_vs_" not in k]
        rec: dict[str, Any] = {"strategy": strategy}
        for src in sources:
            rec[f"new-task accuracy: {src}"] = _fmt(row[src].get("new_task_accuracy"))
        for key in (k for k in row if "_vs_" in k):
            a, b = key.split("_vs_")
            t = row[key]
            rec[f"{a} − {b} (pt, 95% CI)"] = (
                f"{t['difference'] * 100:+.2f} ({t['ci95_low'] * 100:+.2f} to "
                f"{t['ci95_high'] * 100:+.2f})"
            )
            rec[f"McNemar p ({a} vs {b})"] = f"{t['mcnemar_p']:.3g}" + (
                " *" if t["significant"] else ""
            )
        for src in sources:
            kept = row[src]
            rec[f"old task kept: {src}"] = (
                f"{_fmt(kept.get('old_task_accuracy'))} ({_fmt(kept.get('retention'), '.2f')})"
            )
        records.append(rec)
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
    rows: Mapping[str, Mapping[str, Any]], model: str = "distilled", reference: str = "teacher"
) -> str:
    """The sentence a reader wants first: how much smaller, how accurate, how faithful."""
    r, t = rows[model], rows[reference]
    text = (
        f"The {model} student has {r['compression']:.1f}× fewer parameters than the {reference} "
        f"({r['params']:,} vs {t['params']:,}); it reaches {r['accuracy']:.2%} accuracy against the "
        f"{reference}'s {t['accuracy']:.2%} and agrees with it on {r.get('agreement', 1.0):.2%} "
        "of the test images."
    )
    if "speedup" in r:
        text += (
            f" It runs {r['speedup']:.2f}× faster on the CPU at batch 1 ({r['latency_ms']:.3f} ms "
            f"vs {t['latency_ms']:.3f} ms) with {r['throughput_ratio']:.2f}× the throughput "
            f"({r['throughput']:,.0f} vs {t['throughput']:,.0f} images/s), measured with "
            f"{int(r['threads'])} CPU thread(s)."
        )
    return text


def timings_markdown(rows: Mapping[str, Mapping[str, Any]], timing: Mapping[str, Any]) -> str:
    """This run's CPU timings: kept out of DVC-tracked files, since they vary run to run."""
    return "\n".join([
        "# CPU timings of this evaluate run (not versioned)", "", headline(rows), "",
        to_markdown(old_task_table(rows)), "",
        f"Median of {timing['latency_repeats']} runs after warm-up, `torch.inference_mode()`, "
        f"{timing['threads']} thread(s), throughput at batch {timing['throughput_batch']}, models "
        f"timed in turns; 1-minute load average {timing.get('load_avg_1m', float('nan')):.2f} on "
        f"{os.cpu_count()} CPU(s) (a value above the CPU count: a busy machine). Speed-ups are "
        "relative to the teacher.", "",
    ])  # fmt: skip


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
    significance: Mapping[str, Mapping[str, Any]] | None = None,
    transfer_sources: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The whole ``summary.md`` as a string."""
    parts = ["# kdflow evaluation", ""]
    parts += ["## Old task: teacher, student alone, distilled student", ""]
    if "distilled" in old_rows and "teacher" in old_rows:
        parts += [headline(old_rows), ""]
    parts += [to_markdown(old_task_table(old_rows)), ""]
    if timing:
        parts += [
            "CPU latency and throughput of this run are in `timings/evaluate.md` (and MLflow): "
            "they vary from run to run, so they are kept out of the files DVC versions.",
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
    if transfer_sources and any("_vs_" in k for r in transfer_sources.values() for k in r):
        parts += ["## Transfer from each source: what the student's features lose", ""]
        parts += [to_markdown(source_frame(transfer_sources)), ""]
        parts += [
            "Each strategy started from each source model, on the same new-task test images. "
            "The difference is the first source's new-task accuracy minus the other's, with its "
            "paired-bootstrap 95% interval and McNemar's exact p (* p < 0.05). Old task kept: "
            "the old head's accuracy after transfer (its share of that source's own accuracy).",
            "",
        ]
    if significance:
        parts += ["## Are the differences real? (paired tests on the same test images)", ""]
        parts += [to_markdown(significance_table(significance)), ""]
        parts += [
            "Difference = accuracy of the first model minus the second; 95% interval from a "
            "paired bootstrap (10,000 resamples of the test images); p from McNemar's exact test "
            "on the images where exactly one model is right. Significant means p < 0.05. "
            "These tests see the noise of the test images only, not of training: another "
            "training seed, or another CPU type (its float kernels round differently), trains "
            "other models, and a difference of a point can change sign; `python bench/seeds.py` "
            "measures that.",
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
