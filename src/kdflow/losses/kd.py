"""Hinton, Vinyals & Dean (2015): soft targets at temperature T with the T^2 factor."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from kdflow.losses import LOSSES
from kdflow.losses._base import DistillLoss, ce, zscore
from kdflow.metrics import soft_kl
from kdflow.outputs import Outputs


class KDOptions(BaseModel):
    """Options of ``distill.methods.kd`` (T and alpha chosen on validation: docs/sweeps.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(1.0, gt=0.0, le=1000.0)
    alpha: float = Field(0.5, ge=0.0, le=1.0)  # weight of the soft-target term
    # z-score both logit vectors before the softmax (Sun et al., CVPR 2024); T is then a base
    # temperature on unit-variance logits: the paper uses T=2 (3 for some CIFAR-100 pairs) with
    # KD weight 9 next to CE 0.1 (alpha about 0.99 here), not the T chosen without it
    logit_standardization: bool = False


class KD(DistillLoss):
    """``(1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))``.

    T^2 keeps the soft-target gradients on the scale of the hard-label ones as T grows. With
    ``logit_standardization`` s and t are z-scored per sample first (``_base.zscore``).
    """

    def __init__(
        self, temperature: float, alpha: float, logit_standardization: bool = False
    ) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.logit_standardization = bool(logit_standardization)

    def forward(
        self, student: Outputs, teacher: Outputs, target: Tensor, epoch: int = 0
    ) -> dict[str, Tensor]:
        hard = ce(student.logits, target)
        s, t = student.logits, teacher.logits
        if self.logit_standardization:
            s, t = zscore(s), zscore(t)
        soft = soft_kl(s, t, self.temperature) * self.temperature**2
        return {
            "loss": (1.0 - self.alpha) * hard + self.alpha * soft,
            "ce": hard.detach(),
            "kd": soft.detach(),
        }


@LOSSES.register("kd", schema=KDOptions)
def build(o: KDOptions, student_dims: list, teacher_dims: list) -> KD:
    return KD(o.temperature, o.alpha, o.logit_standardization)
