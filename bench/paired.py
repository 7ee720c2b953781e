"""Paired test of two runs' models on the same test images (McNemar's exact test, Holm-adjusted).

Why: a change of defaults (budgets, say) must keep each model's accuracy within noise of the
committed run, and a difference of accuracies alone cannot say whether it is noise.

    cp -r models /tmp/before_models && cp -r data/prepared /tmp/before_prepared   # at the old commit
    git checkout <new> && dvc repro
    python bench/paired.py /tmp/before_models models --data data/prepared --name paired_budgets

Both runs must have prepared the same test images (prepare is deterministic: the same
``data`` params give the same files). Writes bench/results/<name>.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import correct, save, table

from kdflow.stats import mcnemar_exact


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment: one test per model, so one small p among many is expected
    by chance; the adjusted p keeps the chance of any false alarm at the level."""
    order = sorted(range(len(p)), key=p.__getitem__)
    out, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path, help="models/ folder of the reference run")
    ap.add_argument("after", type=Path, help="models/ folder of the run compared with it")
    ap.add_argument("--data", type=Path, default=Path("data/prepared"))
    ap.add_argument("--name", default="paired")
    args = ap.parse_args()
    a, b = correct(args.before, args.data), correct(args.after, args.data)
    missing = sorted(set(a) ^ set(b))
    if missing:
        raise SystemExit(f"paired: {missing[0]} is in only one of the two runs")
    rows = []
    for name in sorted(a):
        only_a, only_b, p = mcnemar_exact(a[name], b[name])
        rows.append({"model": name, "n": len(a[name]), "acc before": float(a[name].mean()),
                     "acc after": float(b[name].mean()), "only before right": only_a,
                     "only after right": only_b, "McNemar p": p})  # fmt: skip
    for row, adjusted in zip(rows, holm([r["McNemar p"] for r in rows]), strict=True):
        row["Holm p"] = adjusted
        row["within noise"] = "yes" if adjusted >= 0.05 else "no"
    print(table(rows))
    print(
        f"wrote {save(args.name, {'before': str(args.before), 'after': str(args.after), 'rows': rows})}"
    )


if __name__ == "__main__":
    main()
