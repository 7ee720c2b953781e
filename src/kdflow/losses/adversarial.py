"""Adversarial distillation: a discriminator learns to tell the teacher's outputs from the student's.

Xu, Hsu & Huang, "Training Shallow and Thin Networks for Acceleration via Knowledge
Distillation with Conditional Adversarial Networks", ICLR 2018 workshop (arXiv:1709.00513):
a discriminator D on the networks' class distributions, conditioned on the label, learns a
loss that the student then learns to fool, on top of cross-entropy and KD.

The min-max is explicit, unlike MEAL-V2 (whose one optimizer sums D's loss into the student's
objective, so the student also helps D): each student step, D first takes ``d_steps`` steps of
its own Adam with the student's outputs detached, then the student's term goes through D with
D's parameters detached.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.func import functional_call

from kdflow.distributed import all_reduce_, initialized
from kdflow.errors import KdflowError
from kdflow.losses import LOSSES
from kdflow.losses._base import DistillLoss, ce, zscore
from kdflow.metrics import soft_kl
from kdflow.outputs import Outputs

SEED_OFFSET = 0xAD7  # D's init stream differs from the model's, both fixed by the run's seed


class AdversarialOptions(BaseModel):
    """Options of ``distill.methods.adversarial``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(4.0, gt=0.0, le=1000.0)  # of the KD term and of D's inputs
    ce_weight: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    # weights chosen on validation (docs/sweeps.md): the tutorial's game alone, CE + fool-D
    kd_weight: float = Field(0.0, ge=0.0, allow_inf_nan=False)  # of T^2 * KL(teacher || student)
    adv_weight: float = Field(1.0, ge=0.0, allow_inf_nan=False)  # of the student's fool-D term
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [64], max_length=8
    )  # D's hidden layer sizes (LeakyReLU between); [] makes D logistic regression
    d_steps: int = Field(1, ge=1, le=100)  # D's Adam steps per student step
    d_lr: float = Field(1e-3, gt=0.0, le=1.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)  # one-sided: D's "real" target is 1 - this
    conditional: bool = True  # D also sees the one-hot label (the teacher's top class if hidden)
    # z-score the logits before the softmax (Sun et al., CVPR 2024); then use a base T near 2
    logit_standardization: bool = False


def discriminator(inputs: int, hidden: list[int]) -> nn.Sequential:
    """A small MLP giving one logit: is this distribution the teacher's?"""
    layers: list[nn.Module] = []
    width = inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class Adversary:
    """D and its own optimizer: the second player of the game.

    Deliberately not a submodule of the loss: the Trainer optimises, all-reduces and
    checkpoints a loss's parameters as the student's, and D must be none of these. Its
    state reaches the resume checkpoint through ``extra_state``.
    """

    def __init__(self, inputs: int, hidden: list[int], lr: float, seed: int) -> None:
        with torch.random.fork_rng(devices=[]):  # the global stream is left as it was
            torch.manual_seed(seed)
            self.net = discriminator(inputs, hidden)
        self.inputs = inputs
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)

    def to(self, device: torch.device) -> Adversary:
        if next(self.net.parameters()).device != device:
            self.net.to(device)
            self.opt.load_state_dict(self.opt.state_dict())  # moves Adam's moments along
        return self

    def frozen(self, x: Tensor) -> Tensor:
        """D's logits with its parameters as constants: gradients reach ``x`` only."""
        params = {k: v.detach() for k, v in self.net.named_parameters()}
        return functional_call(self.net, params, (x,)).squeeze(1)

    def step(self, x: Tensor, target: Tensor) -> None:
        """One Adam step on BCE, D's gradients averaged over processes (one D everywhere)."""
        loss = F.binary_cross_entropy_with_logits(self.net(x).squeeze(1), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if initialized():
            grads = [p.grad for p in self.net.parameters() if p.grad is not None]
            flat = all_reduce_(torch.cat([g.reshape(-1) for g in grads]), mean=True)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        self.opt.step()


class Adversarial(DistillLoss):
    """``ce_weight*CE + kd_weight*T^2*KL(p_t || p_s) + adv_weight*BCE(D(p_s), 1)``.

    ``p = softmax(z/T)``; D learns BCE with the teacher's ``p_t`` as real (target
    ``1 - label_smoothing``) and the student's detached ``p_s`` as fake. With ``conditional``
    D sees ``[p, onehot(y)]``, y the label or, for an image without one, the teacher's top
    class. D is built at the first batch (the class count comes from the logits) from a
    seed fixed at construction, and updates only in training mode with autograd on.
    Returned terms: ``ce``, ``kd``, ``adv``, ``d_loss`` and D's accuracy on the batch before
    its update, ``d_acc_real`` (teacher called real) and ``d_acc_fake`` (student called fake).
    """

    def __init__(self, o: AdversarialOptions, seed: int = 0) -> None:
        super().__init__()
        self.o = o
        self.temperature = float(o.temperature)
        self.seed = int(seed)
        self.adversary: Adversary | None = None

    def _adversary(self, classes: int, device: torch.device) -> Adversary:
        inputs = 2 * classes if self.o.conditional else classes
        if self.adversary is None:
            self.adversary = Adversary(inputs, list(self.o.hidden), self.o.d_lr, self.seed)
            if initialized():  # the ranks share the seed; rank 0's D wins should they not
                for p in self.adversary.to(device).net.parameters():
                    dist.broadcast(p.data, src=0)
        elif self.adversary.inputs != inputs:
            raise KdflowError(
                f"adversarial: the discriminator was built for {self.adversary.inputs} inputs, "
                f"these logits give {inputs}; the class count changed within one run"
            )
        return self.adversary.to(device)

    def _inputs(self, p: Tensor, cond: Tensor | None) -> Tensor:
        # p * classes: a uniform distribution reads all ones, so D's inputs do not shrink
        # towards zero as the class count grows (the one-hot is on the same scale)
        p = p * p.shape[1]
        return p if cond is None else torch.cat([p, cond], dim=1)

    def forward(
        self, student: Outputs, teacher: Outputs, target: Tensor, epoch: int = 0
    ) -> dict[str, Tensor]:
        hard = ce(student.logits, target)
        s, t = student.logits, teacher.logits
        if self.o.logit_standardization:
            s, t = zscore(s), zscore(t)
        t2 = self.temperature**2
        kd = soft_kl(s, t, self.temperature) * t2
        dtype = torch.float32  # D's precision, whatever the logits' (bf16 under AMP, fp64)
        n, k = s.shape
        with torch.autocast(s.device.type, enabled=False):
            p_s = torch.softmax(s.to(dtype) / self.temperature, dim=1)
            p_t = torch.softmax(t.to(dtype) / self.temperature, dim=1)
            cond = None
            if self.o.conditional:
                y = torch.where(target >= 0, target, teacher.logits.argmax(1))
                cond = F.one_hot(y, k).to(dtype)
            d = self._adversary(k, s.device)
            real, fake = self._inputs(p_t.detach(), cond), self._inputs(p_s.detach(), cond)
            both = torch.cat([real, fake])
            labels = torch.cat([torch.full((n,), 1.0 - self.o.label_smoothing), torch.zeros(n)])
            labels = labels.to(both)
            with torch.no_grad():  # D's view of this batch before it learns from it
                seen = d.net(both).squeeze(1)
                d_loss = F.binary_cross_entropy_with_logits(seen, labels)
            if self.training and torch.is_grad_enabled():
                for _ in range(self.o.d_steps):
                    d.step(both, labels)
            fooled = d.frozen(self._inputs(p_s, cond))
            adv = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        loss = self.o.ce_weight * hard + self.o.kd_weight * kd + self.o.adv_weight * adv
        return {
            "loss": loss,
            "ce": hard.detach(),
            "kd": kd.detach(),
            "adv": adv.detach(),
            "d_loss": d_loss,
            "d_acc_real": (seen[:n] > 0).to(dtype).mean(),
            "d_acc_fake": (seen[n:] < 0).to(dtype).mean(),
        }

    def extra_state(self) -> dict[str, Any]:
        """D's weights and its Adam state (empty before the first batch built D)."""
        if self.adversary is None:
            return {}
        net = {k: v.detach().cpu().clone() for k, v in self.adversary.net.state_dict().items()}
        return {
            "inputs": self.adversary.inputs,
            "net": net,
            "optimizer": copy.deepcopy(self.adversary.opt.state_dict()),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            self.adversary = None
            return
        adv = Adversary(int(state["inputs"]), list(self.o.hidden), self.o.d_lr, self.seed)
        adv.net.load_state_dict(state["net"])
        adv.opt.load_state_dict(state["optimizer"])
        self.adversary = adv  # moved to the logits' device at the next batch


@LOSSES.register("adversarial", schema=AdversarialOptions)
def build(
    o: AdversarialOptions,
    student_dims: list[tuple[int, ...]],
    teacher_dims: list[tuple[int, ...]],
) -> Adversarial:
    # the seed of the last torch.manual_seed (seed_everything(train seed) in the stages, the
    # same on every rank): D's init is fixed by the run's seed without drawing from its stream
    return Adversarial(o, seed=(torch.initial_seed() + SEED_OFFSET) % 2**63)
