"""How long this process has run: a stage's fixed cost (imports, MLflow) besides its work."""

from __future__ import annotations

import time

import psutil

_T0 = time.time()


def process_seconds() -> float:
    """Wall time since this process started, else since kdflow.tracking was imported."""
    try:
        return time.time() - psutil.Process().create_time()
    except psutil.Error:
        return time.time() - _T0
