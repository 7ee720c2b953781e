"""LP-FT (Kumar et al. 2022): solve the linear probe first, then fine-tune from that head.

A head that already fits the frozen features distorts the pretrained features less than a
random one whose large early gradients flow into the backbone.
"""

from __future__ import annotations

from pydantic import Field

from kdflow.strategies import STRATEGIES
from kdflow.strategies.finetune import Options as FinetuneOptions
from kdflow.transfer import Phase, finetune_groups, probe_phase


class Options(FinetuneOptions):
    """Fine-tuning's options; its own learning rate (chosen by CV: README)."""

    lr: float | None = Field(0.01, gt=0.0)


@STRATEGIES.register("lp_ft", schema=Options)
def build(model, options, train_x) -> list[Phase]:
    return [
        probe_phase(),
        Phase("ft", 1.0, finetune_groups(model, options["backbone_lr_mult"])),
    ]
