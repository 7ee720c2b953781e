"""Shared by the benchmark scripts: machine facts, a Markdown table, the JSON result."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, object]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d"),
    }


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def table(rows: list[dict[str, object]]) -> str:
    """A Markdown table (pandas' to_markdown) of a list of flat dicts."""
    import pandas as pd

    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g")


def save(name: str, payload: dict[str, object]) -> Path:
    """bench/results/<name>.json, written atomically with the machine's facts."""
    from kdflow.io import atomic_write_text

    text = json.dumps({"machine": machine(), **payload}, indent=2, default=float) + "\n"
    return atomic_write_text(RESULTS / f"{name}.json", text)
