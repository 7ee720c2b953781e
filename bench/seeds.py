"""Training noise of the default run: the whole `dvc repro` once per training seed, on the same
data split and test images, and how far each model and each of the report's comparisons moves.

Why: the report's paired tests measure the noise of the test images only. A run on another
seed, or on another CPU type (float kernels round differently, so the committed figures are
not reproduced byte for byte there), trains other models; a claim that flips between seeds is
not a finding. The committed run's figures are placed within the seeds' spread.

    python bench/seeds.py [--seeds 0 1 2 3] [--set key=value ...]

``train.defaults.seed`` is set per run (every training stage inherits it, transfer included);
``data.seed`` stays, so every run has the same split and test images. Writes
bench/results/seeds.json and prints tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import BIN, merge, pipeline_env, save, table, with_sets

ROOT = Path(__file__).resolve().parents[1]


def accuracies(root: Path) -> dict[str, float]:
    """Each model's test accuracy, as the stages wrote it to the metrics files of ``root``."""
    out = {}
    for role, file in (("teacher", "teacher"), ("student", "student"), ("distilled", "distill")):
        out[role] = json.loads((root / f"metrics/{file}.json").read_text())["test"]["accuracy"]
    for path in sorted((root / "metrics/transfer").glob("*.json")):
        out[f"transfer/{path.stem}"] = json.loads(path.read_text())["new_task"]["accuracy"]
    return out


def significance(root: Path) -> dict[str, dict]:
    """The report's paired comparisons (evaluate's ``significance`` in metrics/evaluate.json)."""
    return json.loads((root / "metrics/evaluate.json").read_text())["significance"]


def output_hashes(repo: Path) -> dict[str, str]:
    """Every stage output's md5 in ``dvc.lock``: the same run elsewhere compares byte for byte."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["path"]: o["md5"] for stage in lock.values() for o in stage.get("outs", [])}


def run_seed(tmp: Path, seed: int, base: dict) -> tuple[dict, dict, dict, float]:
    repo = tmp / f"seed{seed}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    params = merge(base, {"train": {"defaults": {"seed": seed}}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    t0 = time.perf_counter()
    with open(repo / "stages.log", "w") as log:
        subprocess.run([str(BIN / "dvc"), "repro"], cwd=repo, env=pipeline_env(), check=True,
                       stdout=log, stderr=log)  # fmt: skip
    seconds = time.perf_counter() - t0
    return accuracies(repo), significance(repo), output_hashes(repo), seconds


def spread(values: list[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    ap.add_argument("--set", nargs="*", default=[], help="more params, key=value")
    args = ap.parse_args()
    base = with_sets(yaml.safe_load((ROOT / "params.yaml").read_text()), args.set)
    committed = accuracies(ROOT)  # the reference machine's run
    acc, sig, hashes, seconds = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            print(f"[seeds] seed {seed}: dvc repro", flush=True)
            acc[seed], sig[seed], hashes[seed], seconds[seed] = run_seed(Path(tmp), seed, base)
            print(f"[seeds] seed {seed}: {seconds[seed]:.0f}s", flush=True)
    rows = []
    for name in sorted(acc[args.seeds[0]]):
        accs = [acc[s][name] for s in args.seeds]
        s = spread(accs)
        ref = committed.get(name)
        rows.append({"model": name, **{f"seed {k}": a for k, a in zip(args.seeds, accs, strict=True)},
                     **s, "committed": ref,
                     "committed in seed range": None if ref is None else s["min"] <= ref <= s["max"]})  # fmt: skip
    claims = []
    for key in sorted(sig[args.seeds[0]]):
        diffs = [100 * sig[seed][key]["difference"] for seed in args.seeds]
        marks = [sig[seed][key]["significant"] for seed in args.seeds]
        signs = {"+" if d > 0 else "-" for d, m in zip(diffs, marks, strict=True) if m}
        claims.append({"comparison": key.replace("_vs_", " vs "), **{f"seed {k} (pt)": d for k, d in
                       zip(args.seeds, diffs, strict=True)}, "mean (pt)": statistics.fmean(diffs),
                       "significant on": f"{sum(marks)} of {len(marks)}",
                       "same sign where significant": len(signs) <= 1})  # fmt: skip
    print(table(rows))
    print(table(claims))
    path = save("seeds", {"seeds": args.seeds, "sets": args.set, "seconds": seconds,
                          "models": rows, "comparisons": claims, "outputs": hashes})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
