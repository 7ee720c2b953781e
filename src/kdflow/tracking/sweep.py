"""Runs left RUNNING by a process that died (SIGKILL, OOM, a lost machine), closed by the next stage.

Each stage run records its process (pid, host, start time: ``provenance.process_tags``), its
resume folder and its output path. Whichever kdflow stage runs next (also after DVC restored
the dead run's stage from its run cache, when that stage's script never runs) marks stage runs
still RUNNING whose process is gone as KILLED (``kdflow.closed_by``). When the dead run's
output is back (its stage ran again, or DVC restored the output), the run was replaced:
``kdflow.replaced_by`` says by what, and its resume folder, if its run file still names that
run, is removed as stale. Otherwise the folder stays: the stage resumes that run next time.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import mlflow

from kdflow.io import md5_file
from kdflow.tracking.provenance import is_dead
from kdflow.tracking.query import tag_is
from kdflow.tracking.store import call

CHECKPOINTS = "kdflow.checkpoints"  # the run's resume folder (absolute)
WORKDIR = "kdflow.workdir"  # the folder the stage ran in: output paths are relative to it
OUTPUT = "kdflow.output.path"
CLOSED_BY = "kdflow.closed_by"
REPLACED_BY = "kdflow.replaced_by"
RUN_FILE = "mlflow_run.json"  # in the resume folder: the run its checkpoints belong to


def _replacement(uri: str, exp_id: str, run: Any, stage: str, current: str) -> str | None:
    """What took the dead run's place: this stage's run, or the stage's output on disk."""
    tags = run.data.tags
    if tags.get("kdflow.stage") == stage:
        return f"run {current}"  # the same stage runs again (not resuming it: other inputs)
    if tags.get(WORKDIR) != os.getcwd() or not tags.get(OUTPUT):
        return None  # another workspace: its files are not ours to judge
    out = Path(tags[OUTPUT])
    if not out.is_file() or out.stat().st_mtime * 1000 < run.info.start_time:
        return None  # not back (or left from before it): the stage may resume the run
    md5 = md5_file(out)
    query = f"{tag_is('kdflow.output.md5', md5)} and attributes.status = 'FINISHED'"
    client = mlflow.MlflowClient()
    found = call(uri, "find the replacing run", client.search_runs, [exp_id], query,
                 max_results=1, order_by=["attributes.start_time DESC"])  # fmt: skip
    if found:
        return f"run {found[0].info.run_id} (its output {out}, md5 {md5}, restored by DVC)"
    return f"cached output {out} (md5 {md5}, restored by DVC)"


def remove_checkpoint(folder: str | None, run_id: str) -> bool:
    """Delete a resume folder, only if its run file says it belongs to ``run_id``."""
    if not folder:
        return False
    path = Path(folder)
    try:
        owner = json.loads((path / RUN_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return False
    if owner != run_id:
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


def sweep_stage_runs(uri: str, exp_id: str, stage: str, current: str, keep: set[str]) -> list[str]:
    """Close the stage runs of ``exp_id`` left RUNNING by a dead process; the closed run ids."""
    client = mlflow.MlflowClient()
    query = "attributes.status = 'RUNNING' and tags.`kdflow.kind` = 'stage'"
    running = call(uri, "find runs left running", client.search_runs, [exp_id], query,
                   max_results=500)  # fmt: skip
    closed = []
    for run in running:
        rid = run.info.run_id
        if rid in keep or not is_dead(run.data.tags):
            continue
        by = _replacement(uri, exp_id, run, stage, current)
        call(uri, "close a dead run", client.set_terminated, rid, "KILLED")
        call(uri, "tag a dead run", client.set_tag, rid, CLOSED_BY, f"{stage} run {current}")
        if by:
            call(uri, "tag a dead run", client.set_tag, rid, REPLACED_BY, by)
            remove_checkpoint(run.data.tags.get(CHECKPOINTS), rid)
        closed.append(rid)
    return closed
