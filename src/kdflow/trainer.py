"""The one training loop every stage uses.

The loop knows nothing of distillation or transfer: a stage hands it an ``Objective`` (the
loss of a batch, which samples have labels) and optional extra per-epoch metrics. Its parts
live beside it: ``budget`` (batches and steps), ``resume`` (the checkpoint), ``progress``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdflow.budget import Budget, Cooldown, plateaued
from kdflow.config import TrainConfig
from kdflow.data import Feed, TensorBatches
from kdflow.distributed import (
    all_reduce_,
    barrier,
    init_distributed,
    initialized,
    is_main,
    rank,
    resolve_device,
    tune_backends,
    world_size,
)
from kdflow.errors import KdflowError
from kdflow.metrics import classification_metrics, predict
from kdflow.objective import Objective
from kdflow.optim import build_optimizer
from kdflow.progress import Meter, Progress, diverged, eta, first_divergence
from kdflow.resume import ObjectiveExtra, ResumeCheckpoint

__all__ = ["FitResult", "Objective", "Trainer"]  # Objective: re-exported, lives in objective


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float
    resumed_from: int = 0
    stopped_early: bool = False  # validation stopped improving before the budget ran out
    diverged: str | None = None  # the training loss blew up (progress.diverged): what it did


class Trainer:
    """Train a model with one config; checkpoint as it goes (``resume``) and resume after a kill.

    ``extra_metrics(model, epoch)`` adds metrics per epoch (e.g. agreement with a teacher);
    ``on_epoch(metrics, epoch)`` receives every epoch's metrics (e.g. to log to MLflow).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor] | None = None,
        objective: Objective | None = None,
        param_groups: list[dict[str, Any]] | None = None,
        ckpt_dir: str | Path | None = None,
        fingerprint: str = "",
        name: str = "train",
        extra_metrics: Callable[[nn.Module, int], dict[str, float]] | None = None,
        on_epoch: Callable[[dict[str, float], int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.progress = Progress(name)
        self.device = resolve_device(cfg.device)
        init_distributed(self.device)
        tune_backends(self.device)
        self.model = model.to(self.device)
        self.channels_last = cfg.channels_last  # oneDNN convolutions are faster this way on CPU too
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.objective = (objective or Objective(cfg.label_smoothing)).to(self.device)
        self.train_data = TensorBatches(*train)
        self.feed = Feed(self.train_data, self.device, cfg.augment, cfg.augment_policy, cfg.hflip)
        self.augment_gen = torch.Generator()  # CPU: the same crops on every device
        self.val = val
        self.extra_metrics = extra_metrics
        self.on_epoch = on_epoch
        self.budget = Budget(self.train_data, cfg, self.device)
        groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        self.extra_params = self.objective.own_parameters()  # optimised, synced under DDP
        if self.extra_params:
            groups = [*groups, {"params": self.extra_params}]
        self.optimizer, self.scheduler = build_optimizer(cfg, groups, self.budget.total)
        self.ddp_model: nn.Module = self.model
        if initialized():
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if cfg.compile:  # the weights stay self.model's: checkpoints are unchanged
            self.ddp_model = torch.compile(self.ddp_model)
        parts = {"model": self.model, "objective": self.objective}
        parts.update(optimizer=self.optimizer, scheduler=self.scheduler)
        parts["objective_extra"] = ObjectiveExtra(self.objective)  # e.g. a discriminator's Adam
        self.cooldown = parts["cooldown"] = Cooldown()
        self.resume = (
            ResumeCheckpoint(ckpt_dir, fingerprint, world_size(), parts, self.progress.say)
            if ckpt_dir
            else None
        )

    # -- one epoch ---------------------------------------------------------------------
    def _real(self, pos: int, n: int) -> Tensor | None:
        """Which of a batch's samples are real, not DistributedSampler's padding (it repeats
        samples so every rank gets as many): local position j is global j * world + rank."""
        if not initialized():
            return None
        world, me, size = world_size(), rank(), len(self.train_data)
        return ((torch.arange(pos, pos + n) * world + me) < size).to(self.device)

    def _step(
        self, x: Tensor, y: Tensor, idx: Tensor, epoch: int, step: int, amp: AbstractContextManager
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One optimizer step; stops every rank together if the loss is not finite."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            loss, logits, parts = self.objective(self.ddp_model, x, y, idx, epoch)
        bad = (~torch.isfinite(loss.detach())).float()
        all_reduce_(bad)  # every rank stops together, none waits forever
        if bad.item():
            raise KdflowError(
                f"[{self.progress.name}] loss became {loss.item()} at epoch {epoch + 1}, "
                f"step {step + 1}: training diverged; lower the learning rate (lr) or set grad_clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.extra_params and initialized():  # DDP syncs only the model's gradients
            for p in self.extra_params:
                if p.grad is not None:
                    all_reduce_(p.grad, mean=True)
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.cfg.grad_clip
            )
        self.optimizer.step()
        if self.cooldown.active:  # validation stopped improving: the rate falls to 0
            self.cooldown.step(self.optimizer)
        else:
            self.scheduler.step()
        return loss, logits, parts

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.ddp_model.train()
        self.objective.train()  # an objective with its own updates (a discriminator) makes them
        # Augmentation draws from augment_gen (and dropout from the global generator): seeded
        # per epoch, so resuming at an epoch boundary replays what an uninterrupted run would
        # have done. Each rank draws its own augmentation (rank 0 draws what one process would).
        seed = self.cfg.seed * 100_003 + epoch + 1_000_003 * rank()
        torch.manual_seed(seed)
        self.augment_gen.manual_seed(seed)
        meter = Meter(self.device, self.progress.bar(epoch, self.budget.passes, self.budget.steps))
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
        for step, (x, y, idx, pos) in enumerate(self.budget.batches(epoch)):
            x = self.feed(x.to(self.device, non_blocking=True), self.augment_gen)
            y = y.to(self.device, non_blocking=True)
            loss, logits, parts = self._step(x, y, idx, epoch, step, amp)
            real = self._real(pos, y.numel())
            n = y.numel() if real is None else int(real.sum())  # padding counts in no metric
            labelled = self.objective.labelled(y)
            if real is not None:
                labelled = labelled & real
            meter.add(step, loss, logits, y, labelled, n, parts)
        return meter.result()

    def _evaluate(self, metrics: dict[str, float], epoch: int) -> None:
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        if self.val is not None:
            val = classification_metrics(predict(self.model, self.val[0]), self.val[1])
            metrics.update({f"val_{k}": v for k, v in val.items()})
        if self.extra_metrics is not None:
            metrics.update(self.extra_metrics(self.model, epoch))

    # -- the run -----------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Run (or finish) training; leaves the selected weights in ``self.model``."""
        start_epoch, history, best = 0, [], {"epoch": -1, "score": -math.inf, "state": None}
        resumed = self.resume.load() if self.resume is not None else None
        if resumed and self.resume is not None:
            start_epoch, history, best = resumed
            self.progress.say(f"resuming from {self.resume.path} after epoch {start_epoch}")
            if self.on_epoch:  # replay logged epochs so a resumed run's curves are complete
                for i, m in enumerate(history):
                    self.on_epoch(m, i)
        t0 = time.perf_counter()
        epochs, stopped = self.budget.passes, self._stop(history)
        blew_up = first_divergence([h["train_loss"] for h in history])  # resumed: replayed
        for epoch in range(start_epoch, epochs):
            if stopped:
                break
            te = time.perf_counter()
            metrics = self._train_epoch(epoch)
            self._evaluate(metrics, epoch)
            metrics["epoch_seconds"] = time.perf_counter() - te
            history.append(metrics)
            score = metrics.get("val_accuracy", metrics["train_accuracy"])
            if self.val is not None and score > best["score"]:
                state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                best = {"epoch": epoch, "score": score, "state": state}
            stopped = self._stop(history)
            left = 0 if stopped else epochs - epoch - 1
            self.progress.epoch(
                epoch, epochs, metrics, eta(time.perf_counter() - t0, epoch + 1 - start_epoch, left)
            )
            if stopped:
                self.progress.say(f"stopping early after epoch {epoch + 1}")
            if blew_up is None and (blew_up := diverged([h["train_loss"] for h in history])):
                lr = f"{metrics['lr']:.3g}"
                self.progress.say(
                    f"warning: {blew_up}: the learning rate ({lr}) may be too high; "
                    "lower lr or set grad_clip"
                )
            if self.resume is not None and is_main():
                self.resume.save(epoch + 1, history, best, last=stopped or epoch + 1 == epochs)
            barrier()
            if self.on_epoch and is_main():
                self.on_epoch(metrics, epoch)
        use_best = self.cfg.select == "best" and best["state"] is not None
        if use_best:
            self.model.load_state_dict(best["state"])
        best_epoch = best["epoch"] if use_best else len(history) - 1
        seconds = time.perf_counter() - t0
        return FitResult(history, best_epoch, seconds, start_epoch, stopped, blew_up)

    def _stop(self, history: list[dict[str, float]]) -> bool:
        """Early stopping (it needs a validation split; transfer holds out shots for it):
        once validation stops improving, cool the learning rate down, then stop."""
        if self.cooldown.active:
            return self.cooldown.finished
        if self.val is None or len(history) < self.cfg.stop_after * self.budget.passes:
            return False
        scores = [h["val_accuracy"] for h in history]
        if not self._rank0_says(plateaued(scores, self.cfg.patience, self.cfg.min_delta)):
            return False
        if self.cfg.cooldown and len(history) < self.budget.passes:
            # a share of the budget, not of the run so far: a run that plateaus at a high rate
            # early on needs as long a decay as a full schedule's tail gives it
            n = max(1, round(self.cfg.cooldown * self.budget.passes))
            self.cooldown.begin(self.optimizer, n * self.budget.steps)
            self.progress.say(
                f"validation accuracy has not improved by more than {self.cfg.min_delta:g} for "
                f"{self.cfg.patience} epochs: the learning rate falls to 0 over {n} more, "
                f"then training stops"
            )
            return False
        return True

    def _rank0_says(self, flag: bool) -> bool:
        """Rank 0's decision on every rank: under DDP each rank's batch-norm statistics, hence
        its validation accuracy, can differ slightly, and ranks that disagree on stopping
        would wait for each other forever."""
        if not initialized():
            return flag
        vote = torch.tensor([float(flag) if is_main() else 0.0], device=self.device)
        return bool(all_reduce_(vote).item())

    def finish(self) -> None:
        """Drop the resume checkpoint once the stage's outputs are safely written."""
        barrier()
        if self.resume is not None and is_main():
            self.resume.remove()
