"""``kdflow compare``, ``alias``, ``promote`` and ``params``: what each command does.

The store is ``--uri``, else ``tracking.uri`` of the params file, else
``$MLFLOW_TRACKING_URI``, else ``mlflow.db`` at the repository root: the one the stages use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from kdflow.errors import KdflowError

PARAMS = "params.yaml"


def load_params(path: str | Path) -> Any:
    """The validated params of ``path``, every default filled in."""
    from kdflow.params import load_params as load

    return load(path)


def params_file(args: argparse.Namespace) -> Path | None:
    """``--params``, else ``params.yaml`` when the current folder has one."""
    if args.params is not None:
        return Path(args.params)
    return Path(PARAMS) if Path(PARAMS).is_file() else None


def store_of(args: argparse.Namespace) -> str:
    """The tracking URI this command reads: the same store the stages write to."""
    from kdflow.tracking import store_uri, tracking_uri

    if args.uri:
        return args.uri
    path = params_file(args)
    return tracking_uri(load_params(path).tracking) if path else store_uri()


def experiment_of(args: argparse.Namespace) -> str:
    """The MLflow experiment the stages log to: tracking.experiment of the params file."""
    path = params_file(args)
    return load_params(path).tracking.experiment if path else "kdflow"


def _filters_text(args: argparse.Namespace) -> str:
    what = [
        f"stage {args.stage}" if args.stage else "",
        f"pipeline id {args.pipeline_id}" if args.pipeline_id else "",
        f"DVC experiment(s) {', '.join(args.exp)}" if args.exp else "",
        f"commit {args.commit}" if args.commit else "",
        f"MLflow experiment(s) {', '.join(args.mlflow_experiment)}"
        if args.mlflow_experiment
        else "",
    ]
    detail = " and ".join(w for w in what if w)
    return f" for {detail}" if detail else ""


def compare(args: argparse.Namespace) -> None:
    from kdflow.cli.table import render, runs_table
    from kdflow.tracking import require_store, run_filters, search_runs

    uri = store_of(args)
    require_store(uri)
    filters = run_filters(args.stage, args.pipeline_id, args.exp, args.commit)
    runs = search_runs(uri, args.mlflow_experiment or None, filters)
    if runs is None or len(runs) == 0:
        raise KdflowError(f"no runs found at {uri}{_filters_text(args)}")
    table = runs_table(
        runs, sort=args.sort, ascending=args.ascending, columns=args.columns, limit=args.limit
    )
    sys.stdout.write(render(table, args.format))


def alias(args: argparse.Namespace) -> None:
    from kdflow.tracking import alias_files, require_store

    uri = store_of(args)
    require_store(uri)
    missing = [str(f) for f in args.files if not Path(f).is_file()]
    if missing:
        raise KdflowError(f"no such model file: {', '.join(missing)} (dvc checkout / dvc pull?)")
    found = alias_files(uri, [Path(f) for f in args.files], args.alias)
    for path, version in found.items():
        print(f"{path}: {'@' + args.alias + ' -> ' + version if version else 'no registered run'}")
    if not any(found.values()):
        raise KdflowError(f"none of these files was logged by a run in {uri}")


def promote(args: argparse.Namespace) -> None:
    """Move ``champion`` to the registered version of ``--model`` if it earns it (the rule of
    the evaluate stage: no champion yet, or better with McNemar p < 0.05 on the same images)."""
    from kdflow.checkpoint import load_model
    from kdflow.metrics import predict
    from kdflow.tasks import load_task
    from kdflow.tracking import promote as promote_version
    from kdflow.tracking import require_store

    uri = store_of(args)
    require_store(uri)
    if not Path(args.model).is_file():
        raise KdflowError(f"no such model file: {args.model} (dvc checkout / dvc pull?)")
    task = load_task(args.data)
    model, _ = load_model(args.model, "model", expect_classes=task.num_classes)
    pred = predict(model, task["test"][0]).argmax(1)
    decision = promote_version(uri, Path(args.model), pred, task["test"], task.content_hash)
    if decision is None:
        raise KdflowError(f"no registered kdflow-distilled version in {uri} holds {args.model}")
    print(decision.line())


def show_params(args: argparse.Namespace) -> None:
    """Every param as the stages see it: params.yaml lists only overrides of the defaults."""
    resolved = load_params(args.params or PARAMS).model_dump(mode="json")
    sys.stdout.write(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
