"""Carry a trained model to the new task: the wrapper model and the phases strategies return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdflow.engine import Objective
from kdflow.outputs import Outputs


class TransferNet(nn.Module):
    """A ``Net`` with a second head for the new task; the old head stays for retention.

    When ``frozen`` the backbone (and old head) stay in eval mode even while training, so
    BatchNorm statistics cannot move: a linear probe leaves the old task bit-identical.
    """

    def __init__(self, net: nn.Module, new_classes: int) -> None:
        super().__init__()
        self.net = net
        self.new_head = nn.Linear(net.feat_dim, new_classes)
        self.frozen = False

    def freeze_backbone(self, frozen: bool = True, train_old_head: bool = False) -> None:
        self.frozen = frozen
        for p in self.net.parameters():
            p.requires_grad_(not frozen)
        # An old head outside the loss would get no gradient (and stall DDP): freeze it.
        self.net.head.requires_grad_(train_old_head and not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> TransferNet:
        super().train(mode)
        if self.frozen:
            self.net.eval()
        return self

    def forward(self, x: Tensor, with_features: bool = False) -> Tensor | Outputs:
        feats, emb = self.net.backbone(x)
        logits = self.new_head(emb)
        if not with_features:
            return logits
        return Outputs(logits, feats, emb, old_logits=self.net.head(emb))

    def old_task(self) -> nn.Module:
        """The backbone with its old head: the model whose old-task accuracy is 'retention'."""
        return self.net


@dataclass
class Phase:
    """One training run of a strategy (LP-FT has two)."""

    name: str
    epoch_fraction: float
    param_groups: list[dict[str, Any]]
    objective: Objective | None = None  # None: cross-entropy (with train.label_smoothing)
    freeze_backbone: bool = False
    uses_old_head: bool = False  # only LwF trains the old head; others leave it untouched


def head_group(model: TransferNet) -> list[dict[str, Any]]:
    return [{"params": list(model.new_head.parameters())}]


def finetune_groups(model: TransferNet, backbone_lr_mult: float) -> list[dict[str, Any]]:
    backbone = model.net.backbone_parameters()
    return [{"params": backbone, "lr_mult": backbone_lr_mult}, *head_group(model)]


class LwFObjective(Objective):
    """Li & Hoiem: new-task CE + lambda * T^2 * KL(recorded old outputs || old head now)."""

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
        old = (
            F.kl_div(
                F.log_softmax(out.old_logits / t, 1),
                F.log_softmax(self.recorded[idx.to(self.recorded.device)] / t, 1),
                reduction="batchmean",
                log_target=True,
            )
            * t**2
        )
        return new + self.lambda_old * old, out.logits, {"ce": new.detach(), "old": old.detach()}


@torch.inference_mode()
def record_old_outputs(model: TransferNet, x: Tensor, batch_size: int = 1024) -> Tensor:
    """The original old head's logits on the new-task images, before any training."""
    model.eval()
    return torch.cat([model.net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
