"""Fine-tune: the whole network with a new head; the backbone can take a lower learning rate."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kdflow.strategies import STRATEGIES
from kdflow.transfer import Phase, finetune_groups


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    backbone_lr_mult: float = Field(0.1, gt=0.0, le=10.0)


@STRATEGIES.register("finetune", schema=Options)
def build(model, options, train_x) -> list[Phase]:
    return [Phase("finetune", 1.0, finetune_groups(model, options["backbone_lr_mult"]))]
