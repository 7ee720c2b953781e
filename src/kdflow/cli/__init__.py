"""The ``kdflow`` command: compare tracked runs, alias registered models, open the MLflow UI.

Examples: ``kdflow compare --stage distill --sort test.accuracy``, ``kdflow compare --stage
transfer@distilled-lwf --exp exp-a --exp exp-b``, ``kdflow alias models/*.pt models/transfer/*.pt``,
``kdflow promote``, ``kdflow params`` and ``kdflow ui --port 5000``.
"""

from __future__ import annotations

import argparse
from typing import Any

from kdflow.cli import commands, ui
from kdflow.cli.table import DEFAULT_METRICS
from kdflow.errors import run_main

STORE_HELP = (
    "tracking URI (default: tracking.uri of the params file, else $MLFLOW_TRACKING_URI, "
    "else mlflow.db at the repository root)"
)
PARAMS_HELP = "params file whose tracking.uri is the store (default: ./params.yaml if present)"


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


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uri", help=STORE_HELP)
    parser.add_argument("--params", metavar="FILE", help=PARAMS_HELP)


def _compare_parser(sub: Any) -> None:
    cmp_ = sub.add_parser("compare", help="a table of tracked runs, sorted by a metric")
    _store_options(cmp_)
    cmp_.add_argument(
        "--mlflow-experiment",
        action="append",
        metavar="NAME",
        help="MLflow experiment name (repeatable; default: all experiments)",
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
    cmp_.set_defaults(func=commands.compare)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kdflow", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    _compare_parser(sub)

    al = sub.add_parser(
        "alias",
        help="point a registry alias (default: lock) at the versions whose weights are FILES",
        description="After `git checkout <rev> && dvc checkout`, `kdflow alias models/*.pt "
        "models/transfer/*.pt` makes models:/kdflow-<role>@lock the checked-out model.",
    )
    al.add_argument("files", nargs="+", metavar="FILE", help="model checkpoints (.pt)")
    al.add_argument("--alias", default="lock", help="alias name (default: %(default)s)")
    _store_options(al)
    al.set_defaults(func=commands.alias)

    pr = sub.add_parser(
        "promote",
        help="move models:/kdflow-distilled@champion to MODEL's version if it is better",
        description="The evaluate stage's rule: the version that wrote --model becomes the "
        "champion if there is none yet, or if it beats the champion on the test split of --data "
        "(McNemar p < 0.05). The decision is logged on the pipeline run that made it.",
    )
    pr.add_argument("--model", default="models/distilled.pt", help="default: %(default)s")
    pr.add_argument("--data", default="data/prepared/old", help="default: %(default)s")
    _store_options(pr)
    pr.set_defaults(func=commands.promote)

    pa = sub.add_parser(
        "params",
        help="every param as the stages see it (defaults filled in), as YAML",
        description="params.yaml lists only what differs from the defaults; this prints all.",
    )
    pa.add_argument("--params", metavar="FILE", help="params file (default: params.yaml)")
    pa.set_defaults(func=commands.show_params)

    srv = sub.add_parser("ui", help=f"the MLflow UI on {ui.HOST}")
    srv.add_argument("--port", type=_port, default=5000)
    _store_options(srv)
    srv.set_defaults(func=ui.ui)
    return ap


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line on stderr and a non-zero exit for any user mistake."""
    args = build_parser().parse_args(argv)
    run_main(lambda: args.func(args))


__all__ = ["build_parser", "main"]
