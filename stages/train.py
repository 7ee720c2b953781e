"""DVC stage `train@teacher` / `train@student`: train a model on the old task alone."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdflow.errors import run_main
from kdflow.pipeline.stage import StagePaths
from kdflow.pipeline.train import run_train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("role", choices=["teacher", "student"])
    ap.add_argument("--data", required=True, help="prepared old task")
    ap.add_argument(
        "--external", required=True, type=Path, help="folder DVC tracks for models.<role>.weights"
    )
    StagePaths.add_arguments(ap)
    args = ap.parse_args()
    run_train(args.role, args.params, args.data, args.external, StagePaths.from_args(args))


if __name__ == "__main__":
    run_main(main, exit_now=True)
