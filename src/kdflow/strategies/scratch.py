"""Baseline: the same architecture from random initialisation, trained on the new task only."""

from __future__ import annotations

from kdflow.strategies import STRATEGIES
from kdflow.transfer import Phase


@STRATEGIES.register("scratch", from_scratch=True)
def build(model, options, train_x) -> list[Phase]:
    # from_scratch: the stage hands this strategy a freshly initialised model.
    params = [p for n, p in model.named_parameters() if not n.startswith("net.head.")]
    return [Phase("scratch", 1.0, [{"params": params}])]
