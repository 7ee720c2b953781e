"""One parent run per pipeline execution (``dvc repro`` / ``dvc exp run``), its stages under it.

The parent is RUNNING while a stage runs and SCHEDULED between stages (its pipeline awaits the
rest: also after a partial ``dvc repro``); a stage that fails ends it FAILED, one stopped by
SIGTERM/SIGINT KILLED; only the stage that completes the pipeline (evaluate) ends it FINISHED.
A re-run of an unfinished pipeline (same commit, params and DVC experiment) continues that
parent. A parent left RUNNING by a ``dvc`` process that died is closed KILLED by the next stage.
The last stage (evaluate) links every model's run to it, also the runs of stages DVC skipped
or restored from its cache, so one run tree shows the whole pipeline behind the results.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import mlflow

from kdflow.io import md5_file
from kdflow.tracking.flatten import flatten_params
from kdflow.tracking.provenance import is_dead, owner_tags
from kdflow.tracking.query import tag_is
from kdflow.tracking.store import call

PARAMS_HASH = "kdflow.params_hash"
ATTEMPTS = "kdflow.attempts"  # executions (dvc repro) this parent run has seen
UNFINISHED = ("SCHEDULED", "FAILED", "KILLED")  # a later execution continues such a parent


def params_hash(flat: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def close_dead_parents(uri: str, exp_id: str) -> None:
    """Pipeline runs left RUNNING by a ``dvc`` process that has ended: KILLED, and why."""
    client = mlflow.MlflowClient()
    query = "attributes.status = 'RUNNING' and tags.`kdflow.kind` = 'pipeline'"
    for run in call(uri, "find pipeline runs", client.search_runs, [exp_id], query):
        if is_dead(run.data.tags):
            call(uri, "close a pipeline run", client.set_terminated, run.info.run_id, "KILLED")
            call(uri, "tag a pipeline run", client.set_tag, run.info.run_id, "kdflow.closed_by",
                 "its dvc process ended before the pipeline completed")  # fmt: skip


def _unfinished(uri: str, exp_id: str, tags: dict[str, str], phash: str) -> Any:
    """The newest unfinished pipeline run of the same commit, params and DVC experiment."""
    client = mlflow.MlflowClient()
    query = (f"tags.`kdflow.kind` = 'pipeline' and {tag_is(PARAMS_HASH, phash)} and "
             f"{tag_is('kdflow.git_commit', tags['kdflow.git_commit'])}")  # fmt: skip
    found = call(uri, "find an unfinished pipeline run", client.search_runs, [exp_id], query,
                 max_results=50, order_by=["attributes.start_time DESC"])  # fmt: skip
    exp = tags.get("kdflow.dvc_exp")
    for run in found:
        if run.info.status in UNFINISHED and run.data.tags.get("kdflow.dvc_exp") == exp:
            return run
    return None


def parent_run(
    uri: str, exp_id: str, pipeline_id: str, tags: dict[str, str], params: Any = None
) -> str:
    """The pipeline execution's parent run: this execution's, else the unfinished one this
    execution continues, else a new one (with ``params``)."""
    client = mlflow.MlflowClient()
    query = f"{tag_is('kdflow.pipeline_id', pipeline_id)} and tags.`kdflow.kind` = 'pipeline'"
    found = call(uri, "find the pipeline run", client.search_runs, [exp_id], query, max_results=1)
    if found:  # a later stage of this execution; a failed pipeline stays FAILED (--keep-going)
        if found[0].info.status == "SCHEDULED":
            call(
                uri, "continue the pipeline run", client.update_run, found[0].info.run_id, "RUNNING"
            )
        return found[0].info.run_id
    close_dead_parents(uri, exp_id)
    flat = flatten_params(params) if params is not None else {}
    phash = params_hash(flat)
    owner = {**owner_tags(), "kdflow.pipeline_id": pipeline_id}
    earlier = _unfinished(uri, exp_id, tags, phash)
    if earlier is not None:  # a re-run after a failure: the same pipeline, continued
        run_id = earlier.info.run_id
        call(uri, "continue the pipeline run", client.update_run, run_id, "RUNNING")
        attempts = int(earlier.data.tags.get(ATTEMPTS, "1")) + 1
        for k, v in {**owner, ATTEMPTS: str(attempts)}.items():
            call(uri, "tag the pipeline run", client.set_tag, run_id, k, v)
        return run_id
    label = tags.get("kdflow.dvc_exp") or tags["kdflow.git_commit"][:8]
    run = call(
        uri,
        "start the pipeline run",
        client.create_run,
        exp_id,
        run_name=f"pipeline {label}",
        tags={**tags, **owner, "kdflow.kind": "pipeline", "kdflow.stage": "pipeline",
              PARAMS_HASH: phash, ATTEMPTS: "1"},
    )  # fmt: skip
    items = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        call(uri, "log params", client.log_batch, run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def end_parent(uri: str, parent_id: str, status: str, completes: bool) -> None:
    """After a stage: FAILED / KILLED when it failed or was stopped; FINISHED when it completed
    the pipeline; else SCHEDULED (the rest awaits), unless an earlier stage already failed."""
    client = mlflow.MlflowClient()
    if status == "FINISHED" and not completes:
        if call(uri, "read the pipeline run", client.get_run, parent_id).info.status == "RUNNING":
            call(uri, "pause the pipeline run", client.set_terminated, parent_id, "SCHEDULED")
        return
    call(uri, "end the pipeline run", client.set_terminated, parent_id, status)


def link_outputs(uri: str, exp_id: str, parent_id: str, files: list[Path]) -> dict[str, str]:
    """Hang the runs that wrote ``files`` (found by md5) on the parent: ``kdflow.stage_run.<stage>``
    tags (``kdflow.reused.<stage>`` for runs of another execution) and their final metrics."""
    client = mlflow.MlflowClient()
    links: dict[str, str] = {}
    metrics: dict[str, float] = {}
    for path in files:
        found = call(
            uri,
            "find a stage run",
            client.search_runs,
            [exp_id],
            f"{tag_is('kdflow.output.md5', md5_file(path))} and attributes.status = 'FINISHED'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if not found:
            continue
        run = found[0]
        stage = run.data.tags.get("kdflow.stage", path.stem)
        links[stage] = run.info.run_id
        key = stage.replace("@", "_")  # MLflow names allow no "@"
        tags = {f"kdflow.stage_run.{key}": run.info.run_id}
        if run.data.tags.get("mlflow.parentRunId") != parent_id:
            tags[f"kdflow.reused.{key}"] = run.info.run_id
        for k, v in tags.items():
            call(uri, "link a stage run", client.set_tag, parent_id, k, v)
        for k, v in run.data.metrics.items():
            if "." in k:  # final figures (test.accuracy), not per-epoch series
                metrics[f"{key}.{k}"] = v
    now = int(time.time() * 1000)
    items = [mlflow.entities.Metric(k, v, now, 0) for k, v in metrics.items()]
    for i in range(0, len(items), 500):
        call(uri, "log metrics", client.log_batch, parent_id, metrics=items[i : i + 500])
    return links
