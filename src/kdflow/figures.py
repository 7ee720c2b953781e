"""PNG figures of the report (matplotlib, Agg): people would rather see these than read them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
from torch import Tensor


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
    frames = {name: df for name, df in frames.items() if len(df)}  # a solved probe has no epochs
    if not frames:
        return None
    n = len(frames)
    cols = min(n, 3)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    for ax, (name, df) in zip(axes.flat, frames.items(), strict=False):
        x = df["epoch"] if "epoch" in df else range(1, len(df) + 1)
        for col in df.columns:
            if col.endswith(("accuracy", "agreement")):
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
