"""Linear probe: a new head on a frozen backbone kept in eval mode (BN statistics fixed)."""

from __future__ import annotations

from kdflow.strategies import STRATEGIES
from kdflow.transfer import Phase, head_group


@STRATEGIES.register("linear_probe")
def build(model, options, train_x) -> list[Phase]:
    return [Phase("linear_probe", 1.0, head_group(model), freeze_backbone=True)]
