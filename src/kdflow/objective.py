"""What the Trainer minimises: the loss of one batch, and which of its samples have a label.

Everything the loop must know about a method lives here, so the loop itself knows nothing of
distillation, hidden labels or feature regressors.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn


class Objective(nn.Module):
    """The loss of one batch. The default is cross-entropy on the labels.

    Subclasses may hold parameters (a FitNets regressor from student to teacher features):
    the Trainer optimises them with the model, averages their gradients over processes and
    saves them in its resume checkpoints. State that is not a parameter or buffer (an
    adversarial discriminator with its own optimizer) goes through ``extra_state``.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(
        self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, epoch: int
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(loss, logits, parts)``: parts are named loss components, logged per epoch."""
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss, logits, {}

    def labelled(self, y: Tensor) -> Tensor:
        """Which samples count in train accuracy. -1 marks an image whose label is hidden
        (``label_fraction`` < 1): only objectives with other targets (a teacher's soft ones)
        train on such images, and no accuracy can be measured on them."""
        return y >= 0

    def own_parameters(self) -> list[nn.Parameter]:
        """The objective's trainable parameters, optimised alongside the model's."""
        return [p for p in self.parameters() if p.requires_grad]

    def extra_state(self) -> dict[str, Any]:
        """State beyond ``state_dict()`` that the resume checkpoint must carry so a resumed
        run equals an uninterrupted one (default: none)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned; ``{}`` means nothing was saved."""
