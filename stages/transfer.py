"""DVC stages `transfer@<source>-<strategy>` and `transfer-scratch`: carry a source model to the
new task and measure what it kept of the old one (the scratch baseline takes no source)."""

from __future__ import annotations

import argparse

from kdflow.errors import run_main
from kdflow.pipeline.stage import StagePaths
from kdflow.pipeline.transfer import run_transfer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("strategy")
    ap.add_argument("--old", required=True, help="prepared old task")
    ap.add_argument("--new", required=True, help="prepared new task")
    ap.add_argument("--source-name", help="which model --source is: distilled, teacher, student")
    ap.add_argument("--source", help="checkpoint carried to the new task (not for scratch)")
    StagePaths.add_arguments(ap)
    args = ap.parse_args()
    paths = StagePaths.from_args(args)
    run_transfer(
        args.strategy, args.params, args.old, args.new, args.source, paths, args.source_name
    )


if __name__ == "__main__":
    run_main(main, exit_now=True)
