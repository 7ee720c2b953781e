"""The comparison table of ``kdflow compare``: sorted runs, their key params and metrics."""

from __future__ import annotations

import math
from typing import Any

from kdflow.errors import KdflowError

DEFAULT_METRICS = ["test.accuracy", "test.agreement"]
# Shown when at least one listed run logged them: what usually differs between experiments.
KEY_PARAMS = [
    "distill.method",
    "distill.temperature",
    "distill.alpha",
    "transfer.strategy",
    "transfer.source",
    "model.arch",
    "model.width",
]
# (column, tag, characters shown) describing where each run comes from
ORIGIN = [
    ("stage", "tags.kdflow.stage", None),
    ("pipeline", "tags.kdflow.pipeline_id", None),
    ("dvc_exp", "tags.kdflow.dvc_exp", None),
    ("commit", "tags.kdflow.git_commit", 8),
]


def _metric_checker(logged: list[str]) -> Any:
    def check(metric: str, role: str) -> str:
        metric = metric.removeprefix("metrics.")
        if metric not in logged:
            shown = ", ".join(logged[:25]) + (", ..." if len(logged) > 25 else "")
            raise KdflowError(
                f"unknown {role} {metric!r}; metrics these runs logged: {shown or 'none'}"
            )
        return metric

    return check


def runs_table(
    runs: Any,
    *,
    sort: str | None = None,
    ascending: bool = False,
    columns: list[str] | None = None,
    limit: int | None = None,
) -> Any:
    """Sort and shape MLflow's ``search_runs`` frame (already filtered) into the table."""
    import pandas as pd

    df = runs
    logged = sorted(c.removeprefix("metrics.") for c in df.columns if c.startswith("metrics."))
    check = _metric_checker(logged)
    if columns:
        metrics = [check(m, "metric") for m in columns]
    else:
        metrics = [m for m in DEFAULT_METRICS if m in logged]
    if sort is not None:
        sort = check(sort, "sort metric")
        if sort not in metrics:
            metrics.append(sort)
        df = df.sort_values(f"metrics.{sort}", ascending=ascending, na_position="last")
    else:
        df = df.sort_values("start_time", ascending=False)
    if limit is not None:
        df = df.head(limit)

    out = pd.DataFrame(
        {
            "run": df["run_id"].str[:8],
            "start": pd.to_datetime(df["start_time"]).dt.strftime("%Y-%m-%d %H:%M:%S"),
            "status": df["status"],
        }
    )
    for label, tag, n in ORIGIN:
        values = df[tag] if tag in df.columns else pd.Series([None] * len(df), index=df.index)
        out[label] = values.str[:n] if n and values.notna().any() else values
    for p in KEY_PARAMS:
        values = df.get(f"params.{p}")
        if values is not None and values.notna().any():
            out[p] = values
    for m in metrics:
        out[m] = df[f"metrics.{m}"]
    return out.reset_index(drop=True)


def render(table: Any, fmt: str) -> str:
    """Markdown for reading, CSV (raw values) for scripts and pandas."""
    from pandas.api.types import is_numeric_dtype

    from kdflow.report import DASH

    if fmt == "csv":
        return table.to_csv(index=False)

    def cell(v: Any) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return DASH
        if isinstance(v, float):
            return f"{v:.4f}"
        return v

    shown = table.astype(object).apply(lambda col: col.map(cell))
    align = ["right" if is_numeric_dtype(table[c]) else "left" for c in table.columns]
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"
