"""DVC stage `prepare`: split the dataset into the old task and the few-shot new task."""

from __future__ import annotations

import argparse
import json

from kdflow.config import load_params
from kdflow.errors import run_main
from kdflow.tasks import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", required=True)
    ap.add_argument("--out", required=True, help="folder for old/ and new/")
    args = ap.parse_args()
    params = load_params(args.params)
    manifests = prepare(params.data, args.out)
    for name, m in manifests.items():
        counts = {split: sum(c.values()) for split, c in m["per_class"].items()}
        print(
            f"[prepare] {name} task: {json.dumps(counts)} classes {[c['name'] for c in m['classes']]}"
        )


if __name__ == "__main__":
    run_main(main, exit_now=True)
