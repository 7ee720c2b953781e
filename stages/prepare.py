"""DVC stage `prepare`: split the dataset into the old task and the few-shot new task."""

from __future__ import annotations

import argparse

from kdflow.errors import run_main
from kdflow.pipeline.prepare import run_prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", required=True)
    ap.add_argument("--out", required=True, help="folder for old/ and new/")
    args = ap.parse_args()
    run_prepare(args.params, args.out)


if __name__ == "__main__":
    run_main(main, exit_now=True)
