"""Scale: prepare and train one epoch on a generated image folder of 50,000 RGB 128x128 images,
with each step's peak resident memory (target: under 2 GB).

Writes a folder ``train/<class>/*.jpg`` (10 old classes of 5,556 images: 50,004 training
images after the 10% validation split, and 2 new classes) plus a small ``test/``; then, each in
its own process, ``kdflow.tasks.prepare`` (parallel decode into on-disk arrays) and one
Trainer epoch of the student on the old task (read from disk batch by batch).
    python bench/scale.py [--workdir /tmp/kdflow-scale] [--per-class 5556] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import save, table

OLD, NEW = 10, 2


def _write_class(args: tuple[Path, int, int, int, int]) -> int:
    from PIL import Image

    folder, label, start, count, size = args
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([label, start])
    tint = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], np.float32)
    for i in range(start, start + count):
        low = rng.random((8, 8, 3), dtype=np.float32) * 160 + tint * 0.4
        img = Image.fromarray(low.clip(0, 255).astype(np.uint8)).resize((size, size))
        img.save(folder / f"{i:06d}.jpg", quality=90)
    return count


def generate(root: Path, per_class: int, size: int, test_per_class: int) -> int:
    jobs = []
    for c in range(OLD + NEW):
        n = per_class if c < OLD else 200
        for split, count in (("train", n), ("test", test_per_class)):
            folder = root / split / f"class{c:02d}"
            jobs += [(folder, c, s, min(1000, count - s), size) for s in range(0, count, 1000)]
    with ProcessPoolExecutor(2) as pool:
        return sum(pool.map(_write_class, jobs))


PREPARE = """
import json, resource, sys, time
from kdflow.params import parse_params
from kdflow.tasks import prepare
t = time.perf_counter()
cfg = parse_params({"data": dict(dataset="imagefolder", root=sys.argv[1], image_size=int(sys.argv[3]),
                    old_classes=list(range(10)), new_classes=[10, 11], shots_per_class=100)}).data
m = prepare(cfg, sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb":
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "train_images": sum(m["old"]["per_class"]["train"].values())}))
"""

TRAIN = """
import contextlib, io, json, resource, sys, time
from kdflow.config import TrainConfig
from kdflow.models import build_for_task
from kdflow.tasks import load_task
from kdflow.trainer import Trainer
task = load_task(sys.argv[1])
model = build_for_task({"arch": "cnn", "width": 8, "depth": 3}, task)
cfg = TrainConfig(epochs=1, batch_size=128, lr=0.03, device="cpu", workers=int(sys.argv[2]),
                  device_data="off")  # what it measures: batches read from disk
trainer = Trainer(cfg, model, task["train"], task["val"])
t = time.perf_counter()
result = trainer.fit()
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb":
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "images": len(task["train"][1]), "val_accuracy": result.history[-1]["val_accuracy"]}))
"""


def child(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", default="/tmp/kdflow-scale")
    ap.add_argument("--per-class", type=int, default=5556)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the generated folder")
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    t = time.perf_counter()
    n = generate(work / "imgs", args.per_class, args.size, 50)
    gen_s = time.perf_counter() - t
    prep = child(PREPARE, str(work / "imgs"), str(work / "prepared"), str(args.size))
    train = child(TRAIN, str(work / "prepared" / "old"), str(args.workers))
    rows = [
        {"step": f"generate {n:,} JPEGs ({args.size}px)", "seconds": round(gen_s, 1),
         "peak_rss_mb": "", "images": n},
        {"step": "prepare (parallel decode to disk)", "seconds": round(prep["seconds"], 1),
         "peak_rss_mb": round(prep["peak_rss_mb"]), "images": prep["train_images"]},
        {"step": "train 1 epoch, student cnn w8", "seconds": round(train["seconds"], 1),
         "peak_rss_mb": round(train["peak_rss_mb"]), "images": train["images"]},
    ]  # fmt: skip
    print(table(rows))
    print(f"images/s in training: {train['images'] / train['seconds']:.0f}; target peak < 2048 MB")
    out = {"rows": rows, "prepare": prep, "train": train, "size": args.size}
    print(f"\nwrote {save('scale', out)}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
