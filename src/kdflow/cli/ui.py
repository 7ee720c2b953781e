"""``kdflow ui``: the MLflow UI on loopback, stopped with everything it started.

The server runs in its own session (process group); when kdflow ends, by Ctrl-C or SIGTERM,
it stops the whole group, so no server or worker outlives it. MLflow's job runner (a huey
consumer per server, for GenAI evaluation jobs) is not started: the pipeline uses no jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from typing import Any

import psutil

from kdflow.errors import KdflowError

HOST = "127.0.0.1"  # always loopback: the UI has no authentication and can delete runs
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stop(Exception):
    """SIGINT or SIGTERM reached kdflow: stop the server."""


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group of ``proc`` (and any descendant outside it), SIGKILL what
    is left after ``grace`` seconds, and reap ``proc``."""
    try:
        leader = psutil.Process(proc.pid)
        procs = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        _, procs = psutil.wait_procs(procs, timeout=grace)
        if not procs:
            break
    proc.wait()


def serve(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` in a new session until it exits or kdflow is told to stop; the exit status
    (0 when stopped by a signal)."""
    proc: subprocess.Popen | None = None
    pending = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal pending
        pending = True
        if proc is not None:
            raise _Stop

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        if pending:  # a signal came while the server was starting
            raise _Stop
        return proc.wait()
    except _Stop:
        return 0
    finally:
        for s in STOP_SIGNALS:  # a second Ctrl-C must not interrupt the clean-up
            signal.signal(s, signal.SIG_IGN)
        if proc is not None:
            stop_group(proc)
        for s, handler in previous.items():
            signal.signal(s, handler)


def ui(args: argparse.Namespace) -> None:
    from kdflow.cli.commands import experiment_of, store_of
    from kdflow.tracking import require_store, runs_page

    uri = store_of(args)
    if uri.startswith(("http://", "https://")):
        raise KdflowError(f"the tracking store {uri} is a server already: open it in a browser")
    require_store(uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", HOST, "--port", str(args.port)]
    cmd += ["--workers", "1", "--backend-store-uri", uri]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    page = runs_page(uri, experiment_of(args))  # the runs table, not the GenAI overview
    print(f"MLflow UI on http://{HOST}:{args.port}{page} for {uri} (Ctrl-C to stop)",
          file=sys.stderr)  # fmt: skip
    try:
        rc = serve(cmd, env)
    except OSError as exc:
        raise KdflowError(f"could not start the MLflow UI: {exc}") from None
    if rc:
        raise KdflowError(f"mlflow ui exited with status {rc}")
