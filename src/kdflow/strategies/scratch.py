"""Baseline: the same architecture from random initialisation, trained on the new task only."""

from __future__ import annotations

from kdflow.strategies import STRATEGIES
from kdflow.transfer import Phase


@STRATEGIES.register("scratch")
def build(model, options, train_x) -> list[Phase]:
    # The stage hands this strategy a freshly initialised model (from_scratch below).
    params = [p for n, p in model.named_parameters() if not n.startswith("net.head.")]
    return [Phase("scratch", 1.0, [{"params": params}])]


build.from_scratch = True  # type: ignore[attr-defined]
