"""Parallel experiments that share the cores: two experiments queued with ``dvc queue start -j 2``,
each with ``compute.threads`` = its share of the cores, against the same two run one after the
other with every core each (what ``dvc exp run`` does without a queue).

    python bench/parallel.py [--jobs 2] [--set key=value ...]

The thread count is a tracked param (it changes CPU results), so each arm is its own clean
clone with its ``compute.threads`` committed to params.yaml, as a user planning a sweep does,
and the pipeline run once there (the common base, not timed). Then the two experiments
(``distill.methods.kd.temperature`` 2 and 4: distill, the transfers from the distilled student
and evaluate re-run) are timed: one after the other in the first clone, queued side by side in
the second. DVC's run cache is emptied before each timed arm, so nothing is restored instead
of run. Last, the first experiment runs again alone in the queued clone: its metrics must equal
the queued one's (a queued experiment reproduces).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import BIN, parse_sets, pipeline_env, save, table

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ["++distill.methods.kd.temperature=2", "++distill.methods.kd.temperature=4"]


def dvc(repo: Path, *args: str) -> str:
    out = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=pipeline_env(), check=True,
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


def same_metrics(csv: str, a: str, b: str) -> bool:
    """Experiments ``a`` and ``b`` (same params) have the same value in every metrics and
    params column of ``dvc exp show``."""
    import io

    import pandas as pd

    shown = pd.read_csv(io.StringIO(csv)).set_index("Experiment")
    info = {"rev", "typ", "Created", "parent", "State", "Executor"}
    cols = [c for c in shown.columns if c not in info]
    return shown.loc[a, cols].astype(str).equals(shown.loc[b, cols].astype(str))


def base_clone(tmp: Path, name: str, sets: list[str]) -> Path:
    """A clean clone with ``sets`` committed to params.yaml and the pipeline run once (the
    experiments' common base, not timed); its run cache is then emptied, so no experiment
    below is restored from an earlier one instead of running."""
    repo = tmp / name
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in parse_sets(sets).items():
        *outer, last = key.split(".")
        node = params
        for k in outer:
            node = node.setdefault(k, {})
        node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "bench base"], cwd=repo, check=True)
    print(f"[queue] {name}: base pipeline (not timed)", flush=True)
    dvc(repo, "repro")
    subprocess.run(["git", "commit", "-qam", "bench base run"], cwd=repo, check=True)
    shutil.rmtree(repo / ".dvc" / "cache" / "runs", ignore_errors=True)
    return repo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=["data.max_train_per_class=1200",
                                                  "evaluate.onnx=false"])  # fmt: skip
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    share = max(1, cores // args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        repo = base_clone(Path(tmp), "sequential", [*args.set, "compute.threads=null"])
        t0 = time.perf_counter()
        for i, exp in enumerate(EXPERIMENTS):
            dvc(repo, "exp", "run", "-n", f"seq-{i}", "-S", exp)
        sequential = time.perf_counter() - t0
        print(f"[queue] one after the other, {cores} threads each: {sequential:.0f}s", flush=True)

        repo = base_clone(Path(tmp), "queued", [*args.set, f"compute.threads={share}"])
        for i, exp in enumerate(EXPERIMENTS):
            dvc(repo, "exp", "run", "--queue", "-n", f"par-{i}", "-S", exp)
        t0 = time.perf_counter()
        dvc(repo, "queue", "start", "-j", str(args.jobs))
        wait_for_queue(repo)
        parallel = time.perf_counter() - t0
        print(
            f"[queue] queued, -j {args.jobs}, {share} thread(s) each: {parallel:.0f}s", flush=True
        )
        # reproducibility: the first experiment again, alone in the workspace (not timed)
        shutil.rmtree(repo / ".dvc" / "cache" / "runs", ignore_errors=True)
        dvc(repo, "exp", "run", "-n", "alone-0", "-S", EXPERIMENTS[0])
        shown = dvc(repo, "exp", "show", "--no-pager", "--csv")
    rows = [{"how": "one after the other", "threads": cores, "seconds": sequential},
            {"how": f"dvc queue start -j {args.jobs}", "threads": share, "seconds": parallel}]  # fmt: skip
    print(table(rows))
    print(f"queued / sequential: {parallel / sequential:.2f}")
    same = same_metrics(shown, "par-0", "alone-0")
    print(f"a queued experiment's metrics equal the same experiment run alone: {same}")
    path = save("parallel", {"rows": rows, "ratio": parallel / sequential, "sets": args.set,
                             "experiments": EXPERIMENTS, "queued_equals_alone": same,
                             "exp_show_csv": shown})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
