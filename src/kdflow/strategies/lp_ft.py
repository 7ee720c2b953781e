"""LP-FT (Kumar et al. 2022): linear probe first, then fine-tune from that head.

A trained head before fine-tuning distorts the pretrained features less.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kdflow.strategies import STRATEGIES
from kdflow.transfer import Phase, finetune_groups, head_group


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    lp_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    backbone_lr_mult: float = Field(0.1, gt=0.0, le=10.0)


@STRATEGIES.register("lp_ft", schema=Options)
def build(model, options, train_x) -> list[Phase]:
    f = options["lp_fraction"]
    return [
        Phase("lp", f, head_group(model), freeze_backbone=True),
        Phase("ft", 1.0 - f, finetune_groups(model, options["backbone_lr_mult"])),
    ]
