"""Linear probe: a new head on the frozen backbone, solved to convergence (Newton-CG logistic
regression, L2 strength by cross-validation on the labelled shots); BN statistics untouched."""

from __future__ import annotations

from torch import Tensor

from kdflow.strategies import STRATEGIES
from kdflow.transfer import Phase, TransferNet, probe_phase


@STRATEGIES.register("linear_probe")
def build(options: None, model: TransferNet, train_x: Tensor) -> list[Phase]:
    return [probe_phase()]
