"""DVC stage `evaluate`: compare teacher, student and distilled student, and every transfer
from every source (the source table: the same strategy from each source, paired-tested).

Writes the metrics file, the report (summary.md and plots/) and the distilled student exported
to ONNX (parity-checked against PyTorch) and TorchScript; logs one MLflow run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdflow.errors import run_main
from kdflow.pipeline.evaluate import EvaluatePaths, run_evaluate


def named(text: str) -> tuple[str, Path]:
    name, _, path = text.partition("=")
    return name, Path(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    for flag in ("--params", "--old", "--new"):
        ap.add_argument(flag, required=True)
    for flag in ("--transfer-model", "--transfer-curve"):
        ap.add_argument(flag, required=True, help="pattern: {source}, {strategy} name the file")
    for flag in ("--model", "--curve"):
        ap.add_argument(flag, required=True, action="append", type=named, help="NAME=PATH")
    for flag in ("--scratch-model", "--scratch-curve", "--metrics", "--reports", "--export",
                 "--timings"):  # fmt: skip
        ap.add_argument(flag, required=True, type=Path)
    a = ap.parse_args()
    paths = EvaluatePaths(dict(a.model), a.transfer_model, a.scratch_model, dict(a.curve),
                          a.transfer_curve, a.scratch_curve, a.metrics, a.reports, a.export,
                          a.timings)  # fmt: skip
    run_evaluate(a.params, a.old, a.new, paths)


if __name__ == "__main__":
    run_main(main, exit_now=True)
