"""Reading runs back (``kdflow compare``): the store does the filtering, not pandas.

MLflow's filter language has no ``OR`` and no ``IN`` for tags, so alternatives (several DVC
experiments; a commit that is the run's own or its experiment's baseline) are one search
each, and the union is returned.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import mlflow

from kdflow.errors import KdflowError
from kdflow.tracking.store import call, open_store

_HEX = re.compile(r"[0-9a-f]{4,40}")


def quote(value: str) -> str:
    """A string literal for MLflow's filter language, which has no escapes."""
    for q in ("'", '"'):
        if q not in value:
            return f"{q}{value}{q}"
    raise KdflowError(f"{value!r} holds both kinds of quote; MLflow cannot search for it")


def tag_is(key: str, value: str) -> str:
    return f"tags.`{key}` = {quote(value)}"


def run_filters(
    stage: str | None = None,
    pipeline_id: str | None = None,
    exps: list[str] | None = None,
    commit: str | None = None,
) -> list[str]:
    """The filter strings whose union is the runs of ``stage`` in ``pipeline_id``, of one of
    the DVC experiments ``exps``, at ``commit`` (a prefix; also as the experiments' baseline)."""
    base = []
    if stage is not None:
        base.append(tag_is("kdflow.stage", stage))
    if pipeline_id is not None:
        base.append(tag_is("kdflow.pipeline_id", pipeline_id))
    alternatives: list[list[str]] = []
    if exps:
        alternatives.append([tag_is("kdflow.dvc_exp", e) for e in dict.fromkeys(exps)])
    if commit:
        commit = commit.lower()
        if not _HEX.fullmatch(commit):
            raise KdflowError(f"--commit {commit!r} is not a commit id (4-40 hex digits)")
        alternatives.append(
            [
                f"tags.`{t}` LIKE '{commit}%'"
                for t in ("kdflow.git_commit", "kdflow.baseline_commit")
            ]
        )
    return [" and ".join(base + list(combo)) for combo in itertools.product(*alternatives)]


def search_runs(
    uri: str, experiments: list[str] | None = None, filter_string: str | list[str] = ""
) -> Any:
    """Runs as a pandas DataFrame, newest first; a list of filters means any of them."""
    import pandas as pd

    open_store(uri)
    filters = [filter_string] if isinstance(filter_string, str) else filter_string or [""]
    where = {"experiment_names": experiments} if experiments else {"search_all_experiments": True}
    frames = [
        call(uri, "search runs", mlflow.search_runs, filter_string=f, **where) for f in filters
    ]
    if len(frames) == 1:
        return frames[0]
    found = [f for f in frames if len(f)]
    if not found:
        return frames[0]
    runs = pd.concat(found, ignore_index=True).drop_duplicates("run_id")
    return runs.sort_values("start_time", ascending=False, ignore_index=True)
