"""One parent run per pipeline execution (``dvc repro`` / ``dvc exp run``), its stages under it.

The first stage creates the parent; the last (evaluate) links every model's run to it, also
the runs of stages DVC skipped or restored from its cache, so one run tree shows the whole
pipeline that produced the checked-out results.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mlflow

from kdflow.io import md5_file
from kdflow.tracking.flatten import flatten_params
from kdflow.tracking.query import tag_is
from kdflow.tracking.store import call


def parent_run(
    uri: str, exp_id: str, pipeline_id: str, tags: dict[str, str], params: Any = None
) -> str:
    """The pipeline execution's parent run, created (with ``params``) by its first stage."""
    client = mlflow.MlflowClient()
    query = f"{tag_is('kdflow.pipeline_id', pipeline_id)} and tags.`kdflow.kind` = 'pipeline'"
    found = call(uri, "find the pipeline run", client.search_runs, [exp_id], query, max_results=1)
    if found:
        return found[0].info.run_id
    label = tags.get("kdflow.dvc_exp") or tags["kdflow.git_commit"][:8]
    run = call(
        uri,
        "start the pipeline run",
        client.create_run,
        exp_id,
        run_name=f"pipeline {label}",
        tags={**tags, "kdflow.kind": "pipeline", "kdflow.stage": "pipeline"},
    )
    run_id = run.info.run_id
    if params is not None:
        flat = flatten_params(params)
        items = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            call(uri, "log params", client.log_batch, run_id, params=items[i : i + 100])
    # never left RUNNING: each stage moves its end time on as it finishes
    call(uri, "end the pipeline run", client.set_terminated, run_id, "FINISHED")
    return run_id


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
