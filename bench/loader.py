"""Loader: images/s of the Trainer reading the prepared split from disk batch by batch
(``device_data: off``), with DataLoader workers, and gathering batches from a uint8 copy held in
memory (``device_data: auto`` on CPU when it fits), against the whole split held in memory as
one float tensor (0.1).

Same model, params, batches and threads; the variants alternate and repeat, the median counts.
    python bench/loader.py [--repeats 4] [--data data/prepared/old]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import median, save, table
from speed import trainer_epoch

from kdflow.models import build_for_task, model_spec
from kdflow.params import load_params
from kdflow.seed import seed_everything
from kdflow.tasks import load_task


def epoch_seconds(role: str, params, task, data, workers: int, resident: str) -> float:
    seed_everything(0)
    model = build_for_task(model_spec(getattr(params.models, role)), task)
    cfg = getattr(params.train, role).model_copy(
        update={"min_steps": 0, "device": "cpu", "workers": workers, "device_data": resident}
    )
    return trainer_epoch(model, data, cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--data", default="data/prepared/old")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params, task = load_params(args.params), load_task(args.data)
    x, y = task["train"]
    in_memory = (x.materialize(), y)
    variants = {
        "in memory (0.1)": (in_memory, 0, "off"),
        "from disk, per batch": ((x, y), 0, "off"),
        "from disk, 2 workers": ((x, y), 2, "off"),
        "uint8 in memory (device_data auto)": ((x, y), 0, "auto"),
    }
    rows, raw = [], {}
    for role in ("teacher", "student"):
        times: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(args.repeats):  # each repeat starts at another variant (rotated): a
            for name in names[r % len(names) :] + names[: r % len(names)]:  # slow one's wake
                data, workers, resident = variants[name]
                times[name].append(epoch_seconds(role, params, task, data, workers, resident))
        raw[role] = times
        base = median(times["in memory (0.1)"])
        for name, t in times.items():
            rows.append({"model": role, "loader": name, "img/s": round(len(y) / median(t)),
                         "ratio": round(base / median(t), 3)})  # fmt: skip
    print(table(rows))
    print(f"\nwrote {save('loader', {'rows': rows, 'seconds': raw, 'images': len(y)})}")


if __name__ == "__main__":
    main()
