"""Fine-tune: the whole network with a new head; the backbone can take a lower learning rate."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from kdflow.strategies import STRATEGIES
from kdflow.transfer import Phase, TransferNet, finetune_groups


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    lr: float | None = Field(0.03, gt=0.0)  # None: transfer.train.lr (chosen by CV: docs/sweeps.md)
    backbone_lr_mult: float = Field(1.0, gt=0.0, le=10.0)
    # frozen: BatchNorm keeps the source's running statistics while fine-tuning (its scale and
    # shift still learn), so the features a probe head was solved on do not change under it
    bn: Literal["train", "frozen"] = "train"


@STRATEGIES.register("finetune", schema=Options)
def build(options: Options, model: TransferNet, train_x: Tensor) -> list[Phase]:
    groups = finetune_groups(model, options.backbone_lr_mult)
    return [Phase("finetune", groups, frozen_bn=options.bn == "frozen")]
