"""DVC stage `distill`: train the student architecture against the teacher(s)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdflow.errors import run_main
from kdflow.pipeline.distill import run_distill
from kdflow.pipeline.stage import StagePaths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="prepared old task")
    ap.add_argument("--teacher", required=True, help="teacher checkpoint")
    ap.add_argument("--student", required=True, help="student checkpoint (distill.init: student)")
    ap.add_argument("--cache", required=True, help="folder of cached teacher logits")
    ap.add_argument(
        "--external", required=True, type=Path, help="folder DVC tracks for models.student.weights"
    )
    StagePaths.add_arguments(ap)
    args = ap.parse_args()
    paths = StagePaths.from_args(args)
    run_distill(
        args.params, args.data, args.teacher, args.student, args.cache, args.external, paths
    )


if __name__ == "__main__":
    run_main(main, exit_now=True)
