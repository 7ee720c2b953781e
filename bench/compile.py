"""Does ``train.*.compile`` (torch.compile of the trained model) pay on this machine?

Per-epoch seconds of the Trainer with and without it, on the prepared default old task: the
first epoch carries the compilation, the later ones show the steady pace.
    python bench/compile.py [--data data/prepared/old] [--epochs 3] [--arch cnn --width 8]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import save, table

from kdflow.config import TrainConfig
from kdflow.models import build_for_task
from kdflow.seed import seed_everything
from kdflow.tasks import load_task
from kdflow.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/prepared/old")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--width", type=int, default=8)
    args = ap.parse_args()
    task = load_task(args.data)
    rows = []
    for compiled in (False, True):
        seed_everything(0)
        model = build_for_task({"arch": args.arch, "width": args.width, "depth": 3}, task)
        cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=0.03, device="cpu",
                          select="last", compile=compiled)  # fmt: skip
        with contextlib.redirect_stderr(io.StringIO()):
            result = Trainer(cfg, model, task["train"], task["val"]).fit()
        secs = [h["epoch_seconds"] for h in result.history]
        rows.append({"compile": compiled, "first epoch s": secs[0],
                     "later epochs s (mean)": sum(secs[1:]) / max(len(secs) - 1, 1),
                     "val accuracy": result.history[-1]["val_accuracy"]})  # fmt: skip
        print(rows[-1], flush=True)
    print(table(rows))
    ratio = rows[0]["later epochs s (mean)"] / rows[1]["later epochs s (mean)"]
    print(f"steady-state speed-up of compile: {ratio:.2f}x")
    save("compile", {"arch": args.arch, "width": args.width, "rows": rows, "speedup": ratio})


if __name__ == "__main__":
    main()
