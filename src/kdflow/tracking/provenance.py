"""Where a run comes from: its git commit, its DVC experiment and the pipeline execution.

The tags written here let a run be found from a commit, an experiment or a ``dvc repro``, and
tell whether the code that ran differs from the commit (DVC's own rewrites do not count).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import psutil
import yaml

DVC_NAMES = ("dvc", "dvc.exe")


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def dvc_managed(root: Path, experiment: bool) -> set[str]:
    """Files DVC rewrites itself: dvc.lock, every stage output, and an experiment's params.

    DVC deletes a stage's git-tracked outputs before running it and rewrites dvc.lock after;
    ``dvc exp run -S`` edits the params file and records it in the experiment's commit. None of
    these make the code that runs differ from the commit.
    """
    managed = {"dvc.lock"}
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return managed
    for stage in (lock.get("stages") or {}).values():
        managed |= {str(o.get("path")) for o in stage.get("outs") or [] if isinstance(o, dict)}
        if experiment:
            managed |= set(stage.get("params") or {})
    return managed


def git_state() -> dict[str, str]:
    """Commit, and whether files other than DVC's own outputs differ from it."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"commit": "unknown", "dirty": "unknown", "changed": ""}
    changed = [p for p in _git("diff", "--name-only", "--relative", "HEAD").splitlines() if p]
    managed = dvc_managed(Path.cwd(), bool(os.environ.get("DVC_EXP_NAME")))
    own = [
        p for p in changed if not any(p == m or p.startswith(m.rstrip("/") + "/") for m in managed)
    ]
    return {"commit": commit, "dirty": str(bool(own)).lower(), "changed": " ".join(own)[:4000]}


def in_pipeline() -> bool:
    """Started by ``dvc repro`` / ``dvc exp run`` (or told so): the run gets a parent."""
    return bool(os.environ.get("DVC_STAGE") or os.environ.get("KDFLOW_PIPELINE_ID"))


def _is_dvc(cmdline: list[str]) -> bool:
    """``dvc ...``, ``python .../dvc ...`` or ``python -m dvc ...``."""
    return any(Path(a).name in DVC_NAMES for a in cmdline[:2]) or cmdline[1:3] == ["-m", "dvc"]


def pipeline_id() -> str:
    """An id shared by the stages of one ``dvc repro`` / ``dvc exp run``.

    ``KDFLOW_PIPELINE_ID`` wins; otherwise the id of the ``dvc`` process that started this
    stage (its pid and start time); outside DVC, a fresh id.
    """
    if os.environ.get("KDFLOW_PIPELINE_ID"):
        return os.environ["KDFLOW_PIPELINE_ID"]
    try:
        ancestors = psutil.Process().parents()[:8]
    except psutil.Error:
        ancestors = []
    for proc in ancestors:
        try:
            if proc.pid > 1 and _is_dvc(proc.cmdline()):
                exp = os.environ.get("DVC_EXP_NAME", "")  # one per experiment, also from a queue
                key = f"{proc.pid}-{proc.create_time()}-{exp}"
                return hashlib.sha1(key.encode()).hexdigest()[:12]
        except psutil.Error:
            break
    return uuid.uuid4().hex[:12]


def lineage_tags(pipeline: str) -> dict[str, str]:
    """The tags that tie a run to its commit, its DVC experiment and its pipeline execution."""
    git = git_state()
    tags = {
        "kdflow.pipeline_id": pipeline,
        "kdflow.git_dirty": git["dirty"],
        "mlflow.source.git.commit": git["commit"],
        "kdflow.git_commit": git["commit"],
        "kdflow.world_size": os.environ.get("WORLD_SIZE", "1"),  # processes of the stage
    }
    if git["changed"]:
        tags["kdflow.git_changed"] = git["changed"]
    if os.environ.get("DVC_EXP_NAME"):  # set by dvc exp run (workspace, --temp, --queue)
        tags["kdflow.dvc_exp"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["kdflow.baseline_commit"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags
