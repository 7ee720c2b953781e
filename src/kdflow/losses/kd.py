"""Hinton, Vinyals & Dean (2015): soft targets at temperature T with the T^2 factor."""

from __future__ import annotations

from torch import Tensor

from kdflow.losses import LOSSES
from kdflow.losses._base import DistillLoss, ce
from kdflow.metrics import soft_kl
from kdflow.outputs import Outputs


class KD(DistillLoss):
    """``(1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))``.

    T^2 keeps the soft-target gradients on the scale of the hard-label ones as T grows.
    """

    def __init__(self, temperature: float, alpha: float) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def forward(
        self, student: Outputs, teacher: Outputs, target: Tensor, epoch: int = 0
    ) -> dict[str, Tensor]:
        hard = ce(student.logits, target)
        soft = soft_kl(student.logits, teacher.logits, self.temperature) * self.temperature**2
        return {
            "loss": (1.0 - self.alpha) * hard + self.alpha * soft,
            "ce": hard.detach(),
            "kd": soft.detach(),
        }


@LOSSES.register("kd")
def build(cfg, student_dims, teacher_dims) -> KD:
    return KD(cfg.temperature, cfg.alpha)
