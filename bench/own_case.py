"""The user's own case: a folder of RGB images of mixed sizes, a torchvision or timm teacher and
a student of another family; the whole `dvc repro` timed stage by stage with this project's
budgets (early stopping), with early stopping turned off, and with the budgets from before
early stopping (the fixed floors the issue measured), and each model's test accuracy compared
between the early-stopped run and each other one with McNemar's exact test on the same images.

    python bench/own_case.py [--teacher torchvision:resnet18] [--student timm:mobilenetv3_small_050]
                             [--per-class 300] [--set key=value ...] [--arms ...]

The folder is generated from Fashion-MNIST (Debian's dataset package, as the tests' folders
are): train/<class>/ holds ``--per-class`` images per class (3,000 for 10 classes) and test/
a third as many; each image gets its own size (20-48 px) and colour tint.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import BIN, correct, merge, pipeline_env, save, table, with_sets

ROOT = Path(__file__).resolve().parents[1]
# The arms, each a params update: the defaults; early stopping off (today's epochs and floors,
# trained whole); the budgets from before early stopping (params.yaml at 6433726: 15 epochs and
# a 3,000-step floor, the teacher 8 and 1,500; transfer's 30 and 1,000 are unchanged since).
ARMS = {
    "early stopping": {},
    "patience off": {"train": {"defaults": {"patience": None}}},
    "budgets before": {"train": {"defaults": {"patience": None, "epochs": 15, "min_steps": 3000},
                                 "teacher": {"epochs": 8, "min_steps": 1500}}},
}  # fmt: skip


def make_folder(out: Path, per_class: int, seed: int = 0) -> dict[str, int]:
    """train/ and test/ folders of tinted RGB PNGs of mixed sizes, from Fashion-MNIST."""
    from PIL import Image

    from kdflow.datasets.idx import DEBIAN_FASHION, read_idx

    rng = np.random.default_rng(seed)
    x = read_idx(DEBIAN_FASHION / "train-images-idx3-ubyte.gz")
    y = read_idx(DEBIAN_FASHION / "train-labels-idx1-ubyte.gz").copy()
    counts = {}
    for split, n in (("train", per_class), ("test", max(per_class // 3, 10))):
        for c in range(10):
            pool = np.flatnonzero(y == c)
            picks = rng.choice(pool, n, replace=False)
            y[picks] = 255  # never reused by the other split
            folder = out / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, k in enumerate(picks):
                size = int(rng.integers(20, 49))
                tint = rng.uniform(0.4, 1.0, 3)
                rgb = (x[k][..., None] * tint[None, None, :]).astype(np.uint8)
                Image.fromarray(rgb).resize((size, size)).save(folder / f"{i}.png")
        counts[split] = 10 * n
    return counts


def run_pipeline(repo: Path, params: dict) -> dict[str, float]:
    """Each stage of `dvc repro`, in order, timed on its own (``dvc repro -s``)."""
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    names = subprocess.run(
        [str(BIN / "dvc"), "stage", "list", "--name-only"], cwd=repo, env=pipeline_env(),
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    seconds = {}
    for name in names:
        t0 = time.perf_counter()
        with open(repo / "stages.log", "a") as log:  # progress lines: the clone's stages.log
            subprocess.run([str(BIN / "dvc"), "repro", "-s", name], cwd=repo, env=pipeline_env(),
                           check=True, stdout=log, stderr=log)  # fmt: skip
        seconds[name] = time.perf_counter() - t0
        print(f"  {name}: {seconds[name]:.1f}s", flush=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="torchvision:resnet18")
    ap.add_argument("--student", default="timm:mobilenetv3_small_050")
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--set", nargs="*", default=[], help="more params, key=value")
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS),
                    help="which runs (the first is compared with each other one)")  # fmt: skip
    args = ap.parse_args()
    from kdflow.stats import mcnemar_exact

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        counts = make_folder(folder, args.per_class)
        base = yaml.safe_load((ROOT / "params.yaml").read_text())
        own = {"data": {"dataset": "imagefolder", "root": str(folder), "image_size": 32},
               "models": {"teacher": {"arch": args.teacher}, "student": {"arch": args.student}},
               "evaluate": {"onnx": False}}  # fmt: skip
        base = with_sets(merge(base, own), args.set)  # dotted keys, as dvc exp run -S
        runs, right = {}, {}
        for label in args.arms:
            repo = Path(tmp) / label.replace(" ", "_")
            subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
            print(f"[own_case] {label}:", flush=True)
            runs[label] = run_pipeline(repo, merge(base, ARMS[label]))
            right[label] = correct(repo / "models", repo / "data/prepared")
    first, *others = args.arms
    rows = []
    for other in others:
        for name in sorted(right[first]):
            b, c, p = mcnemar_exact(right[first][name], right[other][name])
            rows.append({"model": name, "against": other, f"acc {first}": float(right[first][name].mean()),
                         "acc other": float(right[other][name].mean()), f"only {first} right": b,
                         "only other right": c, "McNemar p": p})  # fmt: skip
    total = {k: sum(v.values()) for k, v in runs.items()}
    stages = [{"stage": s, **{f"{a} s": runs[a][s] for a in args.arms}} for s in runs[first]]
    print(table(stages))
    for other in others:
        print(f"total: {total[first]:.0f}s {first}, {total[other]:.0f}s {other} "
              f"({total[first] / total[other]:.2f}x)")  # fmt: skip
    print(table(rows))
    path = save("own_case", {"teacher": args.teacher, "student": args.student, "images": counts,
                             "arms": {a: ARMS[a] for a in args.arms}, "seconds": runs,
                             "total_seconds": total, "accuracy": rows, "sets": args.set})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
