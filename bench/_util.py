"""Shared by the benchmark scripts: machine facts, a Markdown table, the JSON result, and
``--set key=value`` overrides."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent  # the venv's dvc and python
CACHE = "cache"  # the distill stage's teacher-logit cache (dvc.yaml: --cache cache)


def machine() -> dict[str, object]:
    """The machine facts every result carries (trained numbers differ by CPU type)."""
    from kdflow.tracking.provenance import machine_tags

    tags = machine_tags()
    return {
        "cpu": tags["kdflow.cpu"],
        "cpu_capability": tags["kdflow.cpu_capability"],  # the kernels ATen dispatches to
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": tags["kdflow.torch"],
        "cuda": tags.get("kdflow.gpu"),
        "date": time.strftime("%Y-%m-%d"),
    }


def pipeline_env() -> dict[str, str]:
    """The environment of a ``dvc`` run in a clone: the venv's tools first, quiet and offline,
    and no tracking URI from outside, so the clone's stages log to the clone's own store."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    return {**keep, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip


def merge(base: dict, update: dict) -> dict:
    """``base`` with ``update``'s keys set, nested dicts merged (a params update)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(base.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def with_sets(params: dict, sets: list[str]) -> dict:
    """A params dict with ``--set a.b.c=value ...`` applied (as ``dvc exp run -S``)."""
    for key, value in parse_sets(sets).items():
        *outer, last = key.split(".")
        leaf: dict = {last: value}
        for k in reversed(outer):
            leaf = {k: leaf}
        params = merge(params, leaf)
    return params


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
