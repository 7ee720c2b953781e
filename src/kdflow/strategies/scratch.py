"""Baseline: the same architecture from random initialisation, trained on the new task only."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kdflow.strategies import STRATEGIES
from kdflow.transfer import Phase


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    lr: float | None = Field(0.03, gt=0.0)  # None: transfer.train.lr (chosen by CV: README)


@STRATEGIES.register("scratch", schema=Options, from_scratch=True)
def build(model, options, train_x) -> list[Phase]:
    # from_scratch: the stage hands this strategy a freshly initialised model.
    params = [p for n, p in model.named_parameters() if not n.startswith("net.head.")]
    return [Phase("scratch", 1.0, [{"params": params}])]
