"""Decoupled Knowledge Distillation (DKD).

Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022
(arXiv:2203.08679). Published CIFAR-100 defaults: alpha=1, beta=8, T=4, linear warm-up over
20 epochs; the warm-up here defaults to 5 epochs for short runs.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from kdflow.losses import LOSSES
from kdflow.losses._base import DistillLoss, ce, zscore
from kdflow.outputs import Outputs


class DKDOptions(BaseModel):
    """Options of ``distill.methods.dkd``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(4.0, gt=0.0, le=1000.0)  # chosen on validation (docs/sweeps.md)
    alpha: float = Field(1.0, ge=0.0, allow_inf_nan=False)  # weight of TCKD
    beta: float = Field(2.0, ge=0.0, allow_inf_nan=False)  # weight of NCKD (paper: 8); 2 on val
    warmup_epochs: int = Field(5, ge=0)  # linear ramp of the KD part; 0 = none
    ce_weight: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    # z-score both logit vectors first (Sun et al., CVPR 2024); T is then a base temperature
    # on unit-variance logits: the paper's DKD runs use T=2 (with KD weight 9), not 4
    logit_standardization: bool = False


def _binary_kl(log_z_s: Tensor, log_z_t: Tensor, target: Tensor) -> Tensor:
    """Per-sample KL(b_t || b_s) of the (target, rest) distributions, from scaled logits."""
    gt = torch.zeros_like(log_z_s, dtype=torch.bool).scatter_(1, target.unsqueeze(1), True)

    def log_binary(z: Tensor) -> Tensor:
        lse_all = torch.logsumexp(z, dim=1)
        log_target = z.gather(1, target.unsqueeze(1)).squeeze(1) - lse_all
        log_rest = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=1) - lse_all
        return torch.stack([log_target, log_rest], dim=1)

    lb_s, lb_t = log_binary(log_z_s), log_binary(log_z_t)
    return (lb_t.exp() * (lb_t - lb_s)).sum(dim=1)


def _non_target_kl(z_s: Tensor, z_t: Tensor, target: Tensor) -> Tensor:
    """Per-sample KL between the distributions over the non-target classes only."""
    n, k = z_s.shape
    keep = torch.ones_like(z_s, dtype=torch.bool).scatter_(1, target.unsqueeze(1), False)
    log_q_s = torch.log_softmax(z_s[keep].view(n, k - 1), dim=1)
    log_q_t = torch.log_softmax(z_t[keep].view(n, k - 1), dim=1)
    return (log_q_t.exp() * (log_q_t - log_q_s)).sum(dim=1)


class DKD(DistillLoss):
    """``ce_weight*CE + w(epoch) * (alpha*TCKD + beta*NCKD)``.

    Classical KD couples the target-class term to the non-target term through the teacher's
    confidence (KD = TCKD + (1 - p_t) * NCKD), which suppresses the "dark knowledge" in NCKD
    exactly on the samples the teacher is sure of; DKD weights the two terms independently.
    ``w(epoch) = min((epoch + 1) / warmup_epochs, 1)`` (epoch is 0-based) ramps the KD part
    in, since the large beta destabilises the first epochs. Both terms carry the T^2 factor
    and are averaged over the batch. The non-target term drops the target column exactly
    instead of subtracting a large constant from it. With ``logit_standardization`` both logit
    vectors are z-scored per sample before the temperature (``_base.zscore``).
    """

    def __init__(
        self,
        temperature: float,
        alpha: float = 1.0,
        beta: float = 8.0,
        warmup_epochs: int = 5,
        ce_weight: float = 1.0,
        logit_standardization: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.warmup_epochs = int(warmup_epochs)
        self.ce_weight = float(ce_weight)
        self.logit_standardization = bool(logit_standardization)

    def warmup(self, epoch: int) -> float:
        if self.warmup_epochs <= 0:
            return 1.0
        return min((epoch + 1) / self.warmup_epochs, 1.0)

    def forward(
        self, student: Outputs, teacher: Outputs, target: Tensor, epoch: int = 0
    ) -> dict[str, Tensor]:
        hard = ce(student.logits, target)
        s = student.logits
        if self.logit_standardization:  # zscore works in float32 at least, like the line below
            s = zscore(s) / self.temperature
            t = zscore(teacher.logits).to(s.dtype) / self.temperature
        else:
            s = s.to(torch.promote_types(s.dtype, torch.float32)) / self.temperature
            t = teacher.logits.to(s.dtype) / self.temperature
        t2 = self.temperature**2
        # An image without a label (-1) is split at the teacher's top class instead.
        target = torch.where(target >= 0, target, teacher.logits.argmax(1))
        tckd = _binary_kl(s, t, target).mean() * t2
        nckd = _non_target_kl(s, t, target).mean() * t2
        w = self.warmup(epoch)
        return {
            "loss": self.ce_weight * hard + w * (self.alpha * tckd + self.beta * nckd),
            "ce": hard.detach(),
            "tckd": tckd.detach(),
            "nckd": nckd.detach(),
        }


@LOSSES.register("dkd", schema=DKDOptions)
def build(
    o: DKDOptions,
    student_dims: list[tuple[int, ...]],
    teacher_dims: list[tuple[int, ...]],
) -> DKD:
    return DKD(
        o.temperature, o.alpha, o.beta, o.warmup_epochs, o.ce_weight, o.logit_standardization
    )
