"""LP-FT (Kumar et al. 2022): solve the linear probe first, then fine-tune from that head.

A head that already fits the frozen features distorts the pretrained features less than a
random one whose large early gradients flow into the backbone.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdflow.strategies import STRATEGIES
from kdflow.strategies.finetune import Options as FinetuneOptions
from kdflow.transfer import Phase, TransferNet, finetune_groups, probe_phase


class Options(FinetuneOptions):
    """Fine-tuning's options; its learning rate is transfer.train.lr unless set (CV chose it)."""

    lr: float | None = Field(None, gt=0.0)


@STRATEGIES.register("lp_ft", schema=Options)
def build(options: Options, model: TransferNet, train_x: Tensor) -> list[Phase]:
    return [
        probe_phase(),
        Phase(
            "ft", finetune_groups(model, options.backbone_lr_mult), frozen_bn=options.bn == "frozen"
        ),
    ]
