"""Stage ``prepare``: the dataset split into the old task and the few-shot new task."""

from __future__ import annotations

import json

from kdflow.params import load_params
from kdflow.tasks import prepare


def run_prepare(params_file: str, out: str) -> None:
    manifests = prepare(load_params(params_file).data, out)
    for name, m in manifests.items():
        counts = {split: sum(c.values()) for split, c in m["per_class"].items()}
        classes = [c["name"] for c in m["classes"]]
        print(f"[prepare] {name} task: {json.dumps(counts)} classes {classes}")
