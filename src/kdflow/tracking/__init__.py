"""MLflow tracking: the only package of kdflow that imports mlflow.

One run per stage execution (``Tracker``), nested under one parent run per pipeline
execution; the rest of kdflow uses only the names below. Modules by job: ``clock`` (process
time), ``store`` (where the store is, reachability, a copied repository's paths),
``provenance`` (git, DVC, the process behind a run), ``flatten``, ``experiment`` (the training
experiment), ``run`` (the run's lifecycle), ``pipeline`` (parent runs and their status),
``sweep`` (runs left RUNNING by a dead process), ``models`` (logging, registry, aliases, loading
without unpickling), ``champion`` (the evidence-based ``champion`` alias), ``query`` (reading
runs back).
"""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr: errors only

from kdflow.tracking.champion import promote
from kdflow.tracking.clock import process_seconds
from kdflow.tracking.experiment import runs_page
from kdflow.tracking.flatten import flat_metrics, flatten_params
from kdflow.tracking.models import ALIAS, LOCK_ALIAS, alias_files, load_logged_weights
from kdflow.tracking.provenance import git_state
from kdflow.tracking.query import run_filters, search_runs
from kdflow.tracking.run import Tracker
from kdflow.tracking.store import require_store, store_uri, tracking_uri

__all__ = [
    "ALIAS",
    "LOCK_ALIAS",
    "Tracker",
    "alias_files",
    "flat_metrics",
    "flatten_params",
    "git_state",
    "load_logged_weights",
    "process_seconds",
    "promote",
    "require_store",
    "run_filters",
    "runs_page",
    "search_runs",
    "store_uri",
    "tracking_uri",
]
