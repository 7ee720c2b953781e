"""Learning without Forgetting (Li & Hoiem 2016/2018).

The old head's outputs on the new images are recorded before training and kept as soft
targets, so the backbone learns the new task without drifting away from the old one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from kdflow.metrics import predict, soft_kl
from kdflow.objective import Objective
from kdflow.strategies import STRATEGIES
from kdflow.transfer import Phase, TransferNet


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    lr: float | None = Field(None, gt=0.0)  # None: transfer.train.lr (chosen by CV)
    lambda_old: float = Field(0.3, ge=0.0)
    temperature: float = Field(2.0, gt=0.0)


class LwFObjective(Objective):
    """New-task CE + lambda * T^2 * KL(recorded old outputs || old head now)."""

    def __init__(
        self, recorded: Tensor, lambda_old: float, temperature: float, label_smoothing: float = 0.0
    ) -> None:
        super().__init__(label_smoothing)
        self.register_buffer("recorded", recorded, persistent=False)
        self.lambda_old = lambda_old
        self.temperature = temperature

    def forward(
        self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, epoch: int
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        out = model(x, with_features=True)
        new = F.cross_entropy(out.logits, y, label_smoothing=self.label_smoothing)
        t = self.temperature
        recorded = self.recorded[idx.to(self.recorded.device)]
        old = soft_kl(out.old_logits, recorded, t) * t**2
        return new + self.lambda_old * old, out.logits, {"ce": new.detach(), "old": old.detach()}


@torch.inference_mode()
def record_old_outputs(model: TransferNet, x: Tensor) -> Tensor:
    """The original old head's logits on the new-task images, before any training."""
    return predict(model.old_task(), x)


@STRATEGIES.register(
    "lwf", schema=Options, unaugmented="its old-task targets are recorded on un-augmented images"
)
def build(options: Options, model: TransferNet, train_x: Tensor) -> list[Phase]:
    recorded = record_old_outputs(model, train_x)
    objective = LwFObjective(recorded, options.lambda_old, options.temperature)
    return [Phase("lwf", [{"params": list(model.parameters())}], objective, uses_old_head=True)]
