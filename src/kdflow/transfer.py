"""Carry a trained model to the new task: the two-headed model, phases, and how they train.

A strategy (``kdflow.strategies``) turns a ``TransferNet`` into a list of ``Phase`` objects;
``train_phases`` runs them in order with the same rules for every strategy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from kdflow.config import TrainConfig
from kdflow.metrics import classification_metrics, predict, retention
from kdflow.models import build_for_task, count_params
from kdflow.objective import Objective
from kdflow.outputs import Outputs
from kdflow.probe import solve_head
from kdflow.strategies import STRATEGIES


class TransferNet(nn.Module):
    """A ``Net`` with a second head for the new task; the old head stays for retention.

    When ``frozen`` the backbone (and old head) stay in eval mode even while training, so
    BatchNorm statistics cannot move: a linear probe leaves the old task bit-identical. With
    ``frozen_bn`` only the BatchNorm layers do, and the rest trains.
    """

    def __init__(self, net: nn.Module, new_classes: int) -> None:
        super().__init__()
        self.net = net
        self.new_head = nn.Linear(net.feat_dim, new_classes)
        self.frozen = False
        self.frozen_bn = False

    def freeze_backbone(
        self, frozen: bool = True, train_old_head: bool = False, frozen_bn: bool = False
    ) -> None:
        self.frozen = frozen
        self.frozen_bn = frozen_bn
        for p in self.net.parameters():
            p.requires_grad_(not frozen)
        # An old head outside the loss would get no gradient (and stall DDP): freeze it.
        self.net.head.requires_grad_(train_old_head and not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> TransferNet:
        super().train(mode)
        if self.frozen:
            self.net.eval()
        elif self.frozen_bn:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
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
    """One step of a strategy (LP-FT has two): trained by SGD, or solved in closed form.

    A phase with ``solve`` is not trained: ``solve(model, x, y, seed)`` sets its weights (a linear
    probe fitted to convergence) and returns what it chose (e.g. the L2 strength).
    """

    name: str
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    objective: Objective | None = None  # None: cross-entropy (with train.label_smoothing)
    freeze_backbone: bool = False
    uses_old_head: bool = False  # only LwF trains the old head; others leave it untouched
    frozen_bn: bool = False  # BatchNorm in eval mode while training (running statistics kept)
    solve: Callable[[TransferNet, Tensor, Tensor, int], dict[str, Any]] | None = None


def probe_phase() -> Phase:
    """The new head solved by cross-validated logistic regression on frozen embeddings; its
    folds are drawn with ``transfer.train.seed``."""

    def solve(model: TransferNet, x: Tensor, y: Tensor, seed: int) -> dict[str, Any]:
        return solve_head(model.new_head, model.net, x, y, seed)

    return Phase("linear_probe", freeze_backbone=True, solve=solve)


def head_group(model: TransferNet) -> list[dict[str, Any]]:
    return [{"params": list(model.new_head.parameters())}]


def finetune_groups(model: TransferNet, backbone_lr_mult: float) -> list[dict[str, Any]]:
    backbone = model.net.backbone_parameters()
    return [{"params": backbone, "lr_mult": backbone_lr_mult}, *head_group(model)]


def transfer_model(
    source: nn.Module, spec: dict[str, Any], old_classes: int, new_task: Any, from_scratch: bool
) -> TransferNet:
    """The model a strategy starts from: the source, or its architecture freshly initialised."""
    if from_scratch:
        source = build_for_task(spec, new_task, num_classes=old_classes)
    return TransferNet(source, new_task.num_classes)


FitPhase = Callable[[int, Phase, TrainConfig], object]


def strategy_config(cfg: TrainConfig, options: dict[str, Any]) -> TrainConfig:
    """``transfer.train`` with the strategy's own learning rate, where it sets one."""
    lr = options.get("lr")
    return cfg.model_copy(update={"lr": lr}) if lr else cfg


def train_phases(
    model: TransferNet,
    phases: list[Phase],
    cfg: TrainConfig,
    train: tuple[Tensor, Tensor],
    fit: FitPhase,
) -> dict[str, Any]:
    """Run each phase: solve it, or train it with its share of the budget (``fit``).

    Returns what solved phases chose, by phase name.
    """
    chosen: dict[str, Any] = {}
    for i, phase in enumerate(phases):
        model.freeze_backbone(phase.freeze_backbone, phase.uses_old_head, phase.frozen_bn)
        if phase.solve is not None:
            chosen[phase.name] = phase.solve(model, *train, cfg.seed)
            continue
        if phase.objective is not None:
            phase.objective.label_smoothing = cfg.label_smoothing
        fit(i, phase, cfg)
    model.freeze_backbone(False)
    model.eval()
    return chosen


def build_phases(
    name: str, options: dict[str, Any], model: TransferNet, train_x: Tensor
) -> list[Phase]:
    """A registered strategy's phases for ``model``, from its validated options."""
    return STRATEGIES.build(name, options, model, train_x)


def old_task_kept(
    model: TransferNet, old_test: tuple[Tensor, Tensor], source_accuracy: float | None
) -> dict[str, float | None]:
    """What a transfer left of the old task (none for a model trained from scratch)."""
    kept = None
    if source_accuracy is not None:
        kept = classification_metrics(predict(model.old_task(), old_test[0]), old_test[1])
    acc = None if kept is None else kept["accuracy"]
    return {"accuracy": acc, "source_accuracy": source_accuracy, **retention(source_accuracy, acc)}


def transfer_summary(
    model: TransferNet,
    new_test: tuple[Tensor, Tensor],
    old_test: tuple[Tensor, Tensor],
    source_accuracy: float | None,
) -> dict[str, Any]:
    """New-task quality and, unless trained from scratch, what is left of the old task."""
    new = classification_metrics(predict(model, new_test[0]), new_test[1])
    kept = old_task_kept(model, old_test, source_accuracy)
    return {
        "params": count_params(model),
        "new_task": new,
        "old_task": {k: kept[k] for k in ("accuracy", "source_accuracy", "retention")},
    }
