"""Where a run comes from: its git commit, its DVC experiment, the pipeline execution and the
machine.

The tags written here let a run be found from a commit, an experiment or a ``dvc repro``, tell
whether the code that ran differs from the commit (DVC's own rewrites do not count), name the
process behind a run (pid, host, start time), so a run left RUNNING by a dead process can be
told from one that is still going, and name the CPU and torch that computed it: float kernels
round differently by CPU type, so two runs of one commit agree byte for byte only on the same
kind of CPU.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
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
        outs = {str(o.get("path")) for o in stage.get("outs") or [] if isinstance(o, dict)}
        # DVC lists each cached output in a .gitignore in the output's folder
        managed |= outs | {os.path.join(os.path.dirname(o.rstrip("/")), ".gitignore") for o in outs}
        if experiment:
            managed |= set(stage.get("params") or {})
    return managed


def _is_managed(path: str, managed: set[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in managed)


def git_state() -> dict[str, str]:
    """Commit, and whether files other than DVC's own outputs differ from it: changed tracked
    files and untracked files git does not ignore (new code runs as much as edited code)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"commit": "unknown", "dirty": "unknown", "changed": ""}
    changed = _git("diff", "--name-only", "--relative", "HEAD").splitlines()
    changed += _git("ls-files", "--others", "--exclude-standard").splitlines()
    managed = dvc_managed(Path.cwd(), bool(os.environ.get("DVC_EXP_NAME")))
    own = sorted({p for p in changed if p and not _is_managed(p, managed)})
    return {"commit": commit, "dirty": str(bool(own)).lower(), "changed": " ".join(own)[:4000]}


def in_pipeline() -> bool:
    """Started by ``dvc repro`` / ``dvc exp run`` (or told so): the run gets a parent."""
    return bool(os.environ.get("DVC_STAGE") or os.environ.get("KDFLOW_PIPELINE_ID"))


def _is_dvc(cmdline: list[str]) -> bool:
    """``dvc ...``, ``python .../dvc ...`` or ``python -m dvc ...``."""
    return any(Path(a).name in DVC_NAMES for a in cmdline[:2]) or cmdline[1:3] == ["-m", "dvc"]


def _dvc_ancestor() -> psutil.Process | None:
    """The ``dvc`` process that started this stage, if any."""
    try:
        ancestors = psutil.Process().parents()[:8]
    except psutil.Error:
        return None
    for proc in ancestors:
        try:
            if proc.pid > 1 and _is_dvc(proc.cmdline()):
                return proc
        except psutil.Error:
            return None
    return None


def pipeline_id() -> str:
    """An id shared by the stages of one ``dvc repro`` / ``dvc exp run``.

    ``KDFLOW_PIPELINE_ID`` wins; otherwise the id of the ``dvc`` process that started this
    stage (its pid and start time); outside DVC, a fresh id.
    """
    if os.environ.get("KDFLOW_PIPELINE_ID"):
        return os.environ["KDFLOW_PIPELINE_ID"]
    proc = _dvc_ancestor()
    try:
        if proc is not None:
            exp = os.environ.get("DVC_EXP_NAME", "")  # one per experiment, also from a queue
            key = f"{proc.pid}-{proc.create_time()}-{exp}"
            return hashlib.sha1(key.encode()).hexdigest()[:12]
    except psutil.Error:
        pass
    return uuid.uuid4().hex[:12]


# Tags naming the process behind a run: with them a later stage can tell that it died.
PID, HOST, STARTED = "kdflow.pid", "kdflow.host", "kdflow.pid_started"


def process_tags(proc: psutil.Process | None = None) -> dict[str, str]:
    """pid, host and start time of ``proc`` (this process by default)."""
    proc = proc or psutil.Process()
    try:
        started = f"{proc.create_time():.3f}"
    except psutil.Error:
        return {}
    return {PID: str(proc.pid), HOST: socket.gethostname(), STARTED: started}


def owner_tags() -> dict[str, str]:
    """The process a pipeline's parent run lives as long as: the ``dvc`` that runs it."""
    proc = _dvc_ancestor()
    return process_tags(proc) if proc is not None else {}


def is_dead(tags: dict[str, str]) -> bool:
    """The process the tags name has ended (its pid is gone, or reused by another process).

    Only decided on this host; a run without the tags, or from another host, is never dead.
    """
    if tags.get(HOST) != socket.gethostname() or not tags.get(PID) or not tags.get(STARTED):
        return False
    try:
        pid, started = int(tags[PID]), float(tags[STARTED])
    except ValueError:
        return False
    try:
        return abs(psutil.Process(pid).create_time() - started) > 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else what the platform reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_tags() -> dict[str, str]:
    """What computed a run: CPU model, the kernel level ATen dispatches to, torch, the GPU."""
    import torch

    tags = {
        "kdflow.cpu": cpu_model(),
        "kdflow.cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kdflow.torch": torch.__version__,
    }
    if torch.cuda.is_available():
        tags["kdflow.gpu"] = torch.cuda.get_device_name(0)
    return tags


def lineage_tags(pipeline: str) -> dict[str, str]:
    """The tags that tie a run to its commit, its DVC experiment and its pipeline execution."""
    git = git_state()
    tags = {
        "kdflow.pipeline_id": pipeline,
        "kdflow.git_dirty": git["dirty"],
        "mlflow.source.git.commit": git["commit"],
        "kdflow.git_commit": git["commit"],
        "kdflow.world_size": os.environ.get("WORLD_SIZE", "1"),  # processes of the stage
        **machine_tags(),
    }
    if git["changed"]:
        tags["kdflow.git_changed"] = git["changed"]
    if os.environ.get("DVC_EXP_NAME"):  # set by dvc exp run (workspace, --temp, --queue)
        tags["kdflow.dvc_exp"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["kdflow.baseline_commit"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags
