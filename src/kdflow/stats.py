"""Is a difference between two models on the same test images real? Paired tests.

Both models see the same images, so the comparison is paired: McNemar's exact test on the
images where exactly one of them is right, and a paired bootstrap of the accuracy difference
for its 95% interval (Dietterich 1998; see REFERENCES.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binomtest
from torch import Tensor


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[int, int, float]:
    """Discordant counts (a right/b wrong, a wrong/b right) and the two-sided exact p-value."""
    b = int(np.sum(a_correct & ~b_correct))
    c = int(np.sum(~a_correct & b_correct))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return b, c, p


def paired_bootstrap(
    a_correct: np.ndarray, b_correct: np.ndarray, samples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of accuracy(a) - accuracy(b) over resampled test sets."""
    diff = a_correct.astype(np.float64) - b_correct.astype(np.float64)
    rng = np.random.default_rng(seed)
    n = len(diff)
    means = np.empty(samples)
    for start in range(0, samples, 1000):  # chunks keep memory flat for large test sets
        stop = min(samples, start + 1000)
        means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def compare(
    a_pred: Tensor, b_pred: Tensor, y: Tensor, samples: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Model a against model b on the same labelled images (predicted class ids)."""
    a = (a_pred == y).numpy()
    b = (b_pred == y).numpy()
    a_only, b_only, p = mcnemar_exact(a, b)
    low, high = paired_bootstrap(a, b, samples, seed)
    return {
        "accuracy_a": float(a.mean()),
        "accuracy_b": float(b.mean()),
        "difference": float(a.mean() - b.mean()),
        "ci95_low": low,
        "ci95_high": high,
        "a_only_right": a_only,
        "b_only_right": b_only,
        "mcnemar_p": p,
        "significant": bool(p < 0.05),
    }


def verdict(row: dict[str, Any]) -> str:
    """One plain sentence-part for a report: which way, and whether it is significant."""
    d = row["difference"] * 100
    ci = f"95% CI {row['ci95_low'] * 100:+.2f} to {row['ci95_high'] * 100:+.2f} pt"
    word = "significant" if row["significant"] else "not significant"
    return f"{d:+.2f} pt ({ci}; McNemar p = {row['mcnemar_p']:.3g}: {word} at 0.05)"
