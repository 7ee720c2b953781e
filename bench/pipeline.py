"""Pipeline: wall time of the full default `dvc repro` from a clean clone, and of a no-op one;
which committed files came out different; and each stage's fixed cost (process wall time
minus its training/solving) and model-logging time, read from the clone's MLflow store.
python bench/pipeline.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import save, table

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd: list[str], cwd: Path) -> float:
    # the clone's stages log to the clone's own store (mlflow.db), not to one set outside
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(PATH=f"{BIN}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "kdflow"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        full = timed([str(BIN / "dvc"), "repro"], repo)
        # reproducibility: which committed files (dvc.lock hashes, metrics, plots) came out different
        diff = subprocess.run(
            ["git", "diff", "--name-only"], cwd=repo, capture_output=True, text=True
        )
        changed = diff.stdout.split()
        # what differs, kept so a failed reproduction can be read without re-running it
        lock_diff = subprocess.run(
            ["git", "diff", "-U8", "--", "dvc.lock"], cwd=repo, capture_output=True, text=True
        ).stdout
        noop = [timed([str(BIN / "dvc"), "repro"], repo) for _ in range(3)]
        costs = stage_costs(repo)
    rows = [
        {"run": "full `dvc repro` (clean clone)", "seconds": round(full, 1), "target": "<= 240"},
        {"run": "no-op `dvc repro` (median of 3)", "seconds": round(sorted(noop)[1], 2), "target": "<= 3"},
    ]  # fmt: skip
    print(table(rows))
    print(f"files that differ from the commit after the full run: {changed or 'none'}")
    print("\nPer stage (targets: fixed cost <= 4 s, log + register model <= 1.5 s):\n")
    print(table(costs))
    if lock_diff:
        print(lock_diff[:4000])
    out = {"rows": rows, "noop_runs": noop, "changed": changed, "lock_diff": lock_diff,
           "stages": costs}  # fmt: skip
    print(f"\nwrote {save('pipeline', out)}")


def stage_costs(repo: Path) -> list[dict]:
    """Timings each stage logged to MLflow (never to DVC's files), read from the clone's store
    with kdflow's own reader."""
    import pandas as pd

    from kdflow.params import load_params
    from kdflow.tracking import require_store, search_runs
    from kdflow.tracking.query import tag_is

    tracking = load_params(repo / "params.yaml").tracking
    uri = tracking.uri or f"sqlite:///{repo / 'mlflow.db'}"
    require_store(uri)
    runs = search_runs(uri, [tracking.experiment], tag_is("kdflow.kind", "stage"))
    rows = []
    for _, run in runs.iterrows():
        m = {k.removeprefix("metrics.time."): v for k, v in run.items()
             if k.startswith("metrics.time.")}  # fmt: skip
        if pd.isna(m.get("total_seconds")):
            continue
        rows.append({
            "stage": run["tags.kdflow.stage"],
            "total_s": round(m["total_seconds"], 2),
            "work_s": round(m["work_seconds"], 2),
            "fixed_s": round(m["fixed_seconds"], 2),
            "log_model_s": round(m["log_model_seconds"], 2),
        })  # fmt: skip
    return sorted(rows, key=lambda r: r["stage"])


if __name__ == "__main__":
    main()
