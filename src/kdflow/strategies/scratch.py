"""Baseline: the same architecture from random initialisation, trained on the new task only."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from kdflow.strategies import STRATEGIES
from kdflow.transfer import Phase, TransferNet


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    lr: float | None = Field(0.03, gt=0.0)  # None: transfer.train.lr (chosen by CV: docs/sweeps.md)


@STRATEGIES.register("scratch", schema=Options, from_scratch=True)
def build(options: Options, model: TransferNet, train_x: Tensor) -> list[Phase]:
    # from_scratch: the stage hands this strategy a freshly initialised model.
    params = [p for n, p in model.named_parameters() if not n.startswith("net.head.")]
    return [Phase("scratch", [{"params": params}])]
