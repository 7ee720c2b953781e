"""Learning without Forgetting (Li & Hoiem 2016/2018).

The old head's outputs on the new images are recorded before training and kept as soft
targets, so the backbone learns the new task without drifting away from the old one.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kdflow.strategies import STRATEGIES
from kdflow.transfer import LwFObjective, Phase, record_old_outputs


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    lambda_old: float = Field(1.0, ge=0.0)
    temperature: float = Field(2.0, gt=0.0)


@STRATEGIES.register("lwf", schema=Options)
def build(model, options, train_x) -> list[Phase]:
    recorded = record_old_outputs(model, train_x)
    objective = LwFObjective(recorded, options["lambda_old"], options["temperature"])
    return [
        Phase("lwf", 1.0, [{"params": list(model.parameters())}], objective, uses_old_head=True)
    ]
