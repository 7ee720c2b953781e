"""The one training loop every stage uses.

The Trainer knows nothing of distillation or transfer: a stage hands it an ``Objective``
(what the loss of a batch is) and optional extra per-epoch metrics.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdflow.config import TrainConfig
from kdflow.data import TensorBatches, make_loader
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
from kdflow.io import atomic_torch_save, clean_stale_tmp, safe_load
from kdflow.metrics import classification_metrics, predict
from kdflow.optim import build_optimizer


class Objective(nn.Module):
    """The loss of one batch. The default is cross-entropy on the labels.

    Subclasses may hold parameters (a FitNets regressor): the Trainer optimises them too and
    saves them in its checkpoints.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(
        self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, epoch: int
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss, logits, {}


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float
    resumed_from: int = 0


def _fmt_time(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Trainer:
    """Train a model with one config; checkpoint every epoch and resume after a kill.

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
        self.name = name
        self.device = resolve_device(cfg.device)
        init_distributed(self.device)
        tune_backends(self.device)
        self.model = model.to(self.device)
        self.channels_last = cfg.channels_last  # oneDNN convolutions are faster this way on CPU too
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.objective = (objective or Objective(cfg.label_smoothing)).to(self.device)
        self.train_data = TensorBatches(
            *train, augment=cfg.augment, policy=cfg.augment_policy, hflip=cfg.hflip
        )
        self.val = val
        self.ckpt = Path(ckpt_dir) / "last.pt" if ckpt_dir else None
        self.fingerprint = fingerprint
        self.extra_metrics = extra_metrics
        self.on_epoch = on_epoch
        # batch_size is the global batch: split over the processes, so the same params give
        # the same optimisation (steps, lr, batch) on 1 process or many
        per_rank = max(1, cfg.batch_size // world_size()) if initialized() else cfg.batch_size
        self.loader, self.set_epoch = make_loader(
            self.train_data,
            per_rank,
            cfg.seed,
            workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
        )
        # A budget counts optimizer steps: a small dataset goes round several times per epoch
        # so that the whole run makes at least ``min_steps`` steps.
        self.repeats = max(1, math.ceil(cfg.min_steps / max(cfg.epochs * len(self.loader), 1)))
        self.steps_per_epoch = len(self.loader) * self.repeats
        groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        # parameters of the loss itself (a FitNets regressor): optimised, synced under DDP
        self.extra_params = [p for p in self.objective.parameters() if p.requires_grad]
        if self.extra_params:
            groups = [*groups, {"params": self.extra_params}]
        self.optimizer, self.scheduler = build_optimizer(
            cfg, groups, cfg.epochs * self.steps_per_epoch
        )
        self.ddp_model: nn.Module = self.model
        if initialized():
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    # -- checkpoints -------------------------------------------------------------------
    def _state(self, epoch: int, history: list, best: dict) -> dict[str, Any]:
        return {
            "format": "kdflow.trainer/1",
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": history,
            "best": best,
        }

    def _try_resume(self) -> tuple[int, list, dict] | None:
        if self.ckpt is None:
            return None
        clean_stale_tmp(self.ckpt.parent)
        if not self.ckpt.is_file():
            return None
        try:
            state = safe_load(self.ckpt, "resume checkpoint")
        except KdflowError as exc:
            self._say(f"{exc}; starting over")
            return None
        if (
            state.get("fingerprint") != self.fingerprint
            or state.get("format") != "kdflow.trainer/1"
        ):
            self._say(f"{self.ckpt} belongs to other params or data; starting over")
            return None
        self.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return int(state["epoch"]), list(state["history"]), dict(state["best"])

    def _say(self, msg: str) -> None:
        if is_main():
            print(f"[{self.name}] {msg}", file=sys.stderr, flush=True)

    # -- loop --------------------------------------------------------------------------
    def _batches(self, epoch: int) -> Any:
        """Batches of the epoch, each with the position of its first sample on this rank."""
        for r in range(self.repeats):
            self.set_epoch(epoch * self.repeats + r)
            pos = 0
            for x, y, idx in self.loader:
                yield x, y, idx, pos
                pos += len(y)

    def _real(self, pos: int, n: int) -> Tensor | None:
        """Which of a batch's samples are real, not DistributedSampler's padding (it repeats
        samples so every rank gets as many): local position j is global j * world + rank."""
        if not initialized():
            return None
        world, me, size = world_size(), rank(), len(self.train_data)
        return ((torch.arange(pos, pos + n) * world + me) < size).to(self.device)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.ddp_model.train()
        # Augmentation draws from the global generator: seed it per epoch, so resuming at
        # an epoch boundary replays exactly what an uninterrupted run would have done.
        # Each rank draws its own augmentation (rank 0 draws what one process would).
        torch.manual_seed(self.cfg.seed * 100_003 + epoch + 1_000_003 * rank())
        acc_dtype = torch.float32 if self.device.type == "mps" else torch.float64  # no fp64 on MPS
        totals = torch.zeros(4, dtype=acc_dtype, device=self.device)
        parts_sum: dict[str, float] = {}
        bar = None
        if is_main() and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(
                total=self.steps_per_epoch,
                desc=f"{self.name} {epoch + 1}/{self.cfg.epochs}",
                leave=False,
                file=sys.stderr,
                mininterval=0.5,
            )
        amp_ctx = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
        )
        for step, (x, y, idx, pos) in enumerate(self._batches(epoch)):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with amp_ctx:
                loss, logits, parts = self.objective(self.ddp_model, x, y, idx, epoch)
            bad = (~torch.isfinite(loss.detach())).float()
            all_reduce_(bad)  # every rank stops together, none waits forever
            if bad.item():
                raise KdflowError(
                    f"[{self.name}] loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}: "
                    "training diverged; lower the learning rate (lr) or set grad_clip"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.extra_params and initialized():  # e.g. a FitNets regressor
                for p in self.extra_params:
                    if p.grad is not None:
                        all_reduce_(p.grad, mean=True)
            if self.cfg.grad_clip:
                nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]],
                    self.cfg.grad_clip,
                )
            self.optimizer.step()
            self.scheduler.step()
            real = self._real(pos, y.numel())
            n = y.numel() if real is None else int(real.sum())  # padding counts in no metric
            labelled = y >= 0  # -1 marks an image without a label (distillation only)
            if real is not None:
                labelled = labelled & real
            totals += torch.stack(
                [
                    loss.detach().to(acc_dtype) * n,
                    ((logits.argmax(1) == y) & labelled).sum().to(acc_dtype),
                    torch.tensor(float(n), dtype=acc_dtype, device=self.device),
                    labelled.sum().to(acc_dtype),
                ]
            )
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + float(v) * n
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(
                        loss=f"{totals[0] / totals[2]:.4f}",
                        acc=f"{totals[1] / totals[3].clamp_min(1):.3f}",
                    )
        if bar is not None:
            bar.close()
        local = float(totals[2])
        all_reduce_(totals)
        count = float(totals[2])
        out = {
            "train_loss": float(totals[0]) / count,
            "train_accuracy": float(totals[1]) / max(float(totals[3]), 1.0),
        }
        # Loss components are this rank's averages (they are for curves, not for selection).
        out.update({f"train_{k}": v / local for k, v in parts_sum.items()})
        return out

    def fit(self) -> FitResult:
        """Run (or finish) training; leaves the selected weights in ``self.model``."""
        start_epoch, history, best = 0, [], {"epoch": -1, "score": -math.inf, "state": None}
        resumed = self._try_resume()
        if resumed:
            start_epoch, history, best = resumed
            self._say(f"resuming from {self.ckpt} after epoch {start_epoch}")
            if self.on_epoch:  # replay logged epochs so a resumed run's curves are complete
                for i, m in enumerate(history):
                    self.on_epoch(m, i)
        t0 = time.perf_counter()
        for epoch in range(start_epoch, self.cfg.epochs):
            te = time.perf_counter()
            metrics = self._train_epoch(epoch)
            metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
            if self.val is not None:
                val = classification_metrics(predict(self.model, self.val[0]), self.val[1])
                metrics.update({f"val_{k}": v for k, v in val.items()})
            if self.extra_metrics is not None:
                metrics.update(self.extra_metrics(self.model, epoch))
            metrics["epoch_seconds"] = time.perf_counter() - te
            history.append(metrics)
            score = metrics.get("val_accuracy", metrics["train_accuracy"])
            if self.val is not None and score > best["score"]:
                best = {
                    "epoch": epoch,
                    "score": score,
                    "state": {
                        k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
                    },
                }
            done = epoch + 1 - start_epoch
            eta = (time.perf_counter() - t0) / done * (self.cfg.epochs - epoch - 1)
            val_txt = f" val_acc {metrics['val_accuracy']:.4f}" if "val_accuracy" in metrics else ""
            self._say(
                f"epoch {epoch + 1}/{self.cfg.epochs} loss {metrics['train_loss']:.4f} "
                f"acc {metrics['train_accuracy']:.4f}{val_txt} "
                f"({metrics['epoch_seconds']:.1f}s, ETA {_fmt_time(eta)})"
            )
            if self.ckpt is not None and is_main():
                atomic_torch_save(self.ckpt, self._state(epoch + 1, history, best))
            barrier()
            if self.on_epoch and is_main():
                self.on_epoch(metrics, epoch)
        use_best = self.cfg.select == "best" and best["state"] is not None
        if use_best:
            self.model.load_state_dict(best["state"])
        best_epoch = best["epoch"] if use_best else self.cfg.epochs - 1
        return FitResult(history, best_epoch, time.perf_counter() - t0, start_epoch)

    def finish(self) -> None:
        """Drop the resume checkpoint once the stage's outputs are safely written."""
        barrier()
        if self.ckpt is not None and is_main():
            self.ckpt.unlink(missing_ok=True)
