"""Paired significance tests: McNemar's exact p and the bootstrap interval, by hand."""

from __future__ import annotations

import math

import numpy as np
import torch

from kdflow import stats


def test_mcnemar_exact_matches_the_binomial_by_hand() -> None:
    # a right / b wrong on 3 images, a wrong / b right on 11, agreement elsewhere
    a = np.array([1] * 3 + [0] * 11 + [1] * 50 + [0] * 6, dtype=bool)
    b = np.array([0] * 3 + [1] * 11 + [1] * 50 + [0] * 6, dtype=bool)
    b_only, c_only, p = stats.mcnemar_exact(a, b)
    assert (b_only, c_only) == (3, 11)
    n = 14
    want = 2 * sum(math.comb(n, k) for k in range(0, 4)) / 2**n
    assert math.isclose(p, want, rel_tol=1e-12)


def test_mcnemar_without_discordant_pairs_is_one() -> None:
    a = np.ones(10, dtype=bool)
    assert stats.mcnemar_exact(a, a) == (0, 0, 1.0)


def test_compare_finds_a_real_difference_and_not_a_fake_one() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (2000,), generator=g)
    good = torch.where(torch.rand(2000, generator=g) < 0.95, y, (y + 1) % 5)
    worse = torch.where(torch.rand(2000, generator=g) < 0.85, y, (y + 1) % 5)
    real = stats.compare(good, worse, y, samples=2000)
    assert real["significant"] and real["ci95_low"] > 0 < real["difference"]
    assert real["ci95_low"] <= real["difference"] <= real["ci95_high"]
    # the same model against a copy with 3 flipped predictions: no evidence either way
    copy = good.clone()
    copy[:3] = (copy[:3] + 1) % 5
    fake = stats.compare(good, copy, y, samples=2000)
    assert not fake["significant"] and fake["ci95_low"] <= 0 <= fake["ci95_high"]
    assert stats.verdict(fake).endswith("not significant at 0.05)")
    assert stats.verdict(real).endswith(": significant at 0.05)")


def test_bootstrap_is_reproducible_and_follows_its_seed() -> None:
    a = np.random.default_rng(1).random(500) < 0.9
    b = np.random.default_rng(2).random(500) < 0.8
    first = stats.paired_bootstrap(a, b, 1000, seed=3)
    np.random.seed(99)  # the global generator must not matter
    assert stats.paired_bootstrap(a, b, 1000, seed=3) == first
    assert stats.paired_bootstrap(a, b, 1000, seed=4) != first
