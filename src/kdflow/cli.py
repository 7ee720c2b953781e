"""The ``kdflow`` command: compare tracked runs, alias registered models, open the MLflow UI.

Examples: ``kdflow compare --stage distill --sort test.accuracy``, ``kdflow compare --stage
transfer@lwf --exp exp-a --exp exp-b``, ``kdflow alias models/*.pt models/transfer/*.pt`` and
``kdflow ui --port 5000``.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from kdflow.errors import KdflowError, run_main

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
DEFAULT_UI_STORE = "sqlite:///mlflow.db"
DASH = "—"


def _store_exists(uri: str) -> None:
    """A sqlite URI to a missing file would silently create an empty store: say so instead."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if str(db) != ":memory:" and not db.is_file():
            raise KdflowError(
                f"no MLflow store at {db} ({uri}); run a stage first (dvc repro) or pass --uri"
            )


def _short(value: Any, n: int) -> Any:
    return value[:n] if isinstance(value, str) else value


def _col(df: Any, name: str) -> Any:
    return df[name] if name in df.columns else None


def runs_table(
    runs: Any,
    *,
    stage: str | None = None,
    pipeline_id: str | None = None,
    exps: list[str] | None = None,
    commit: str | None = None,
    sort: str | None = None,
    ascending: bool = False,
    columns: list[str] | None = None,
    limit: int | None = None,
) -> Any:
    """Select, sort and shape MLflow's ``search_runs`` frame into the comparison table."""
    import pandas as pd

    df = runs
    if stage is not None:
        tag = _col(df, "tags.kdflow.stage")
        df = df[tag == stage] if tag is not None else df.iloc[0:0]
    if pipeline_id is not None:
        tag = _col(df, "tags.kdflow.pipeline_id")
        df = df[tag == pipeline_id] if tag is not None else df.iloc[0:0]
    if exps:
        tag = _col(df, "tags.kdflow.dvc_exp")
        df = df[tag.isin(exps)] if tag is not None else df.iloc[0:0]
    if commit:
        tags = [_col(df, t) for t in ("tags.kdflow.git_commit", "tags.kdflow.baseline_commit")]
        keep = [t.fillna("").str.startswith(commit) for t in tags if t is not None]
        df = df[keep[0] | keep[1]] if len(keep) == 2 else df[keep[0]] if keep else df.iloc[0:0]
    if df.empty:
        what = [
            f"stage {stage}" if stage else "",
            f"pipeline id {pipeline_id}" if pipeline_id else "",
            f"experiment(s) {', '.join(exps)}" if exps else "",
            f"commit {commit}" if commit else "",
        ]
        detail = " and ".join(w for w in what if w)
        raise KdflowError(f"no runs found{' for ' + detail if detail else ''}")

    logged = sorted(c.removeprefix("metrics.") for c in df.columns if c.startswith("metrics."))

    def check(metric: str, role: str) -> str:
        metric = metric.removeprefix("metrics.")
        if metric not in logged:
            shown = ", ".join(logged[:25]) + (", ..." if len(logged) > 25 else "")
            raise KdflowError(
                f"unknown {role} {metric!r}; metrics these runs logged: {shown or 'none'}"
            )
        return metric

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
    for label, tag, n in [
        ("stage", "tags.kdflow.stage", None),
        ("pipeline", "tags.kdflow.pipeline_id", None),
        ("dvc_exp", "tags.kdflow.dvc_exp", None),
        ("commit", "tags.kdflow.git_commit", 8),
    ]:
        values = _col(df, tag)
        if values is None:
            values = pd.Series([None] * len(df), index=df.index)
        out[label] = values.map(lambda v, n=n: _short(v, n) if n else v)
    for p in KEY_PARAMS:
        values = _col(df, f"params.{p}")
        if values is not None and values.notna().any():
            out[p] = values
    for m in metrics:
        out[m] = df[f"metrics.{m}"]
    return out.reset_index(drop=True)


def render(table: Any, fmt: str) -> str:
    """Markdown for reading, CSV (raw values) for scripts and pandas."""
    from pandas.api.types import is_numeric_dtype

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


def _compare(args: argparse.Namespace) -> None:
    from kdflow.config import TrackingConfig
    from kdflow.tracking import search_runs, tracking_uri

    uri = args.uri or tracking_uri(TrackingConfig())
    _store_exists(uri)
    runs = search_runs(uri, args.experiment or None)
    if runs is None or len(runs) == 0:
        where = f" in experiment(s) {', '.join(args.experiment)}" if args.experiment else ""
        raise KdflowError(f"no runs found at {uri}{where}")
    table = runs_table(
        runs,
        stage=args.stage,
        pipeline_id=args.pipeline_id,
        exps=args.exp,
        commit=args.commit,
        sort=args.sort,
        ascending=args.ascending,
        columns=args.columns,
        limit=args.limit,
    )
    sys.stdout.write(render(table, args.format))


def _alias(args: argparse.Namespace) -> None:
    from kdflow.config import TrackingConfig
    from kdflow.tracking import alias_files, tracking_uri

    uri = args.uri or tracking_uri(TrackingConfig())
    _store_exists(uri)
    missing = [str(f) for f in args.files if not Path(f).is_file()]
    if missing:
        raise KdflowError(f"no such model file: {', '.join(missing)} (dvc checkout / dvc pull?)")
    found = alias_files(uri, [Path(f) for f in args.files], args.alias)
    for path, version in found.items():
        print(f"{path}: {'@' + args.alias + ' -> ' + version if version else 'no registered run'}")
    if not any(found.values()):
        raise KdflowError(f"none of these files was logged by a run in {uri}")


def _ui(args: argparse.Namespace) -> None:
    # Always loopback: the UI has no authentication and can delete runs.
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--backend-store-uri",
        args.uri,
    ]
    print(f"MLflow UI on http://127.0.0.1:{args.port} (Ctrl-C to stop)", file=sys.stderr)
    try:
        rc = subprocess.call(cmd)
    except KeyboardInterrupt:
        rc = 0
    except OSError as exc:
        raise KdflowError(f"could not start the MLflow UI: {exc}") from None
    if rc:
        raise KdflowError(f"mlflow ui exited with status {rc}")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1..65535")
    return port


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kdflow", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    cmp_ = sub.add_parser("compare", help="a table of tracked runs, sorted by a metric")
    cmp_.add_argument(
        "--uri", help=f"tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_UI_STORE})"
    )
    cmp_.add_argument(
        "--experiment",
        action="append",
        metavar="NAME",
        help="experiment name (repeatable; default: all experiments)",
    )
    cmp_.add_argument("--stage", help="only runs of this stage (tag kdflow.stage), e.g. distill")
    cmp_.add_argument("--pipeline-id", help="only runs of one dvc repro / exp run")
    cmp_.add_argument(
        "--exp",
        action="append",
        metavar="NAME",
        help="only runs of this DVC experiment (repeatable: side by side)",
    )
    cmp_.add_argument("--commit", help="only runs at this git commit (or with it as baseline)")
    cmp_.add_argument(
        "--sort", metavar="METRIC", help="sort by this metric (default: newest first)"
    )
    cmp_.add_argument("--ascending", action="store_true", help="smallest first (e.g. latency)")
    cmp_.add_argument(
        "--columns",
        nargs="+",
        metavar="METRIC",
        help=f"metrics to show (default: {' '.join(DEFAULT_METRICS)})",
    )
    cmp_.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    cmp_.add_argument("--limit", type=_positive, metavar="N", help="show at most N runs")
    cmp_.set_defaults(func=_compare)

    al = sub.add_parser(
        "alias",
        help="point a registry alias (default: lock) at the versions whose weights are FILES",
        description="After `git checkout <rev> && dvc checkout`, `kdflow alias models/*.pt "
        "models/transfer/*.pt` makes models:/kdflow-<role>@lock the checked-out model.",
    )
    al.add_argument("files", nargs="+", metavar="FILE", help="model checkpoints (.pt)")
    al.add_argument("--alias", default="lock", help="alias name (default: %(default)s)")
    al.add_argument(
        "--uri", help=f"tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_UI_STORE})"
    )
    al.set_defaults(func=_alias)

    ui = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1")
    ui.add_argument("--port", type=_port, default=5000)
    ui.add_argument("--uri", default=DEFAULT_UI_STORE, help="backend store (default: %(default)s)")
    ui.set_defaults(func=_ui)
    return ap


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line on stderr and a non-zero exit for any user mistake."""
    args = build_parser().parse_args(argv)
    run_main(lambda: args.func(args))


if __name__ == "__main__":
    main()
