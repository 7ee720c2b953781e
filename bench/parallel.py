"""Parallel experiments that share the cores: two experiments queued with ``dvc queue start -j 2``,
each with ``compute.threads`` = its share of the cores, against the same two run one after the
other with every core each (what ``dvc exp run`` does without a queue).

    python bench/parallel.py [--set key=value ...]

A clean clone sets ``compute.threads`` to cores / jobs in params.yaml, as a user planning a sweep
does, and runs the pipeline once (the experiments' common base, not timed); then the two
experiments (``distill.methods.kd.temperature`` 2 and 4: distill, the transfers from the
distilled student and evaluate re-run) one after the other, then queued side by side. Both arms
run the same stages with the same params, so their metrics must be equal (checked).
Setting ``compute.threads`` per queued experiment instead (``-S compute.threads=1``) re-runs the
whole pipeline, since every training stage depends on it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import parse_sets, save, table

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXPERIMENTS = ["++distill.methods.kd.temperature=2", "++distill.methods.kd.temperature=4"]


def env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    return {**keep, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip


def dvc(repo: Path, *args: str) -> str:
    out = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env(), check=True,
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout


def wait_for_queue(repo: Path) -> None:
    """Until no queued experiment is running or waiting; fails if one failed."""
    while True:
        status = dvc(repo, "queue", "status")
        if "Failed" in status:
            raise SystemExit(f"a queued experiment failed:\n{status}")
        if "Running" not in status and "Queued" not in status:
            return
        time.sleep(2)


def same_metrics(csv: str) -> bool:
    """seq-i and par-i (same params) have the same value in every metrics and params column."""
    import io

    import pandas as pd

    shown = pd.read_csv(io.StringIO(csv)).set_index("Experiment")
    info = {"rev", "typ", "Created", "parent", "State", "Executor"}
    cols = [c for c in shown.columns if c not in info]
    return all(
        shown.loc[f"seq-{i}", cols].astype(str).equals(shown.loc[f"par-{i}", cols].astype(str))
        for i in range(len(EXPERIMENTS))
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=["data.max_train_per_class=1200",
                                                  "evaluate.onnx=false"])  # fmt: skip
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    share = max(1, cores // args.jobs)
    args.set = [*args.set, f"compute.threads={share}"]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "kdflow"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        for key, value in parse_sets(args.set).items():
            *outer, last = key.split(".")
            node = params
            for k in outer:
                node = node.setdefault(k, {})
            node[last] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run(["git", "commit", "-qam", "bench base"], cwd=repo, check=True)
        print("[queue] base pipeline (not timed)", flush=True)
        dvc(repo, "repro")
        subprocess.run(["git", "commit", "-qam", "bench base run"], cwd=repo, check=True)

        t0 = time.perf_counter()
        for i, exp in enumerate(EXPERIMENTS):
            dvc(repo, "exp", "run", "-n", f"seq-{i}", "-S", exp)
        sequential = time.perf_counter() - t0
        print(f"[queue] one after the other, {share} thread(s) each: {sequential:.0f}s", flush=True)

        for i, exp in enumerate(EXPERIMENTS):
            dvc(repo, "exp", "run", "--queue", "-n", f"par-{i}", "-S", exp)
        t0 = time.perf_counter()
        dvc(repo, "queue", "start", "-j", str(args.jobs))
        wait_for_queue(repo)
        parallel = time.perf_counter() - t0
        print(f"[queue] queued, -j {args.jobs}, {share} thread(s) each: {parallel:.0f}s")
        shown = dvc(repo, "exp", "show", "--no-pager", "--csv")
    rows = [{"how": "one after the other", "threads": share, "seconds": sequential},
            {"how": f"dvc queue start -j {args.jobs}", "threads": share, "seconds": parallel}]  # fmt: skip
    print(table(rows))
    print(f"queued / sequential: {parallel / sequential:.2f}")
    same = same_metrics(shown)
    print(f"queued experiments' metrics equal the sequential ones: {same}")
    path = save("parallel", {"rows": rows, "ratio": parallel / sequential, "sets": args.set,
                             "experiments": EXPERIMENTS, "same_metrics": same,
                             "exp_show_csv": shown})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
