"""Shared by the benchmark scripts: machine facts, a Markdown table, the JSON result, and
``--set key=value`` overrides."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = "cache"  # the distill stage's teacher-logit cache (dvc.yaml: --cache cache)


def machine() -> dict[str, object]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d"),
    }


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``--set key=value ...`` as dotted overrides for ``kdflow.params.with_overrides`` (values
    read as YAML, as ``dvc exp run -S`` reads them)."""
    return {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in sets)}


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


def correct(models: Path, data: Path) -> dict[str, Any]:
    """Per test image, is each model under ``models`` right (numpy bools; the old task for the
    trained models, the new task for ``transfer/``): the input of a paired test."""
    from kdflow.checkpoint import load_model
    from kdflow.metrics import predict
    from kdflow.tasks import load_task

    old, new = load_task(data / "old"), load_task(data / "new")
    out = {}
    for path in sorted(models.rglob("*.pt")):
        if "export" in path.parts:
            continue
        name = path.relative_to(models).with_suffix("").as_posix()
        task = new if name.startswith("transfer/") else old
        model, _ = load_model(path, name, None, None)
        x, y = task["test"]
        out[name] = (predict(model.eval(), x).argmax(1) == y).numpy()
    return out
