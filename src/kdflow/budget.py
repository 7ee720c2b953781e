"""How much a run trains: each process's batch, and the optimizer steps of an epoch.

``batch_size`` is the global batch, split evenly over the processes, so the same params give
the same optimisation (steps, learning rate, batch) on one process or many.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from kdflow.config import TrainConfig
from kdflow.data import TensorBatches, fits_device, make_loader
from kdflow.distributed import world_size
from kdflow.errors import ParamsError


def per_rank_batch(batch_size: int, world: int) -> int:
    """Each process's share of the global batch; an uneven split would silently train
    another batch than the one asked for (99 for 100 on 3 processes), so it stops."""
    if batch_size % world:
        raise ParamsError(
            f"params.yaml: batch_size {batch_size} is not divisible by the {world} processes "
            f"of this run (it is the global batch, split evenly over them); use a multiple "
            f"of {world} or another number of processes"
        )
    return batch_size // world


def passes(epochs: int, min_steps: int, steps: int, max_steps: int | None = None) -> int:
    """Passes over the data of a whole run: ``epochs``, more where a small dataset would make
    fewer than ``min_steps`` steps, fewer where ``max_steps`` caps the run."""
    n = max(epochs, math.ceil(min_steps / max(steps, 1)))
    if max_steps is not None:
        n = min(n, math.ceil(max_steps / max(steps, 1)))
    return max(n, 1)


class Budget:
    """The seeded loader of this process, and how many passes and steps a run makes.

    One pass over the data is one epoch of the Trainer (one evaluation, one checkpoint), so a
    small dataset is evaluated often enough to stop early after a few passes without a
    plateau. ``min_steps`` adds passes to small data; ``max_steps`` is a ceiling.
    """

    def __init__(self, data: TensorBatches, cfg: TrainConfig, device: torch.device) -> None:
        per_rank = per_rank_batch(cfg.batch_size, world_size())
        # auto on CPU keeps the DataLoader when worker processes were asked for
        resident = cfg.device_data == "on" or (
            cfg.device_data == "auto"
            and not (device.type == "cpu" and cfg.workers)
            and fits_device(data, device, cfg.device_data_share)
        )
        self.on_device = resident
        self.loader, self.set_epoch = make_loader(
            data, per_rank, cfg.seed, workers=cfg.workers, pin_memory=device.type == "cuda",
            device=device if resident else None,
        )  # fmt: skip
        self.steps = len(self.loader)  # optimizer steps of one pass
        self.passes = passes(cfg.epochs, cfg.min_steps, self.steps, cfg.max_steps)
        self.total = self.passes * self.steps
        if cfg.max_steps is not None:
            self.total = min(self.total, cfg.max_steps)

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, Tensor, int]]:
        """Batches of one pass, each with the position of its first sample on this rank;
        the last pass stops at ``max_steps``."""
        self.set_epoch(epoch)
        left = self.total - epoch * self.steps
        pos = 0
        for step, (x, y, idx) in enumerate(self.loader):
            if step >= left:
                return
            yield x, y, idx, pos
            pos += len(y)


def plateaued(scores: list[float], patience: int | None, min_delta: float = 0.0) -> bool:
    """Early stopping: the last ``patience`` evaluations improved on the best before them by
    no more than ``min_delta``. Read from the history, so a resumed run stops where an
    uninterrupted one would."""
    if patience is None or not scores:
        return False
    best, last = -math.inf, 0
    for i, s in enumerate(scores):
        if s > best + min_delta:
            best, last = s, i
    return len(scores) - 1 - last >= patience


class Cooldown:
    """After validation stops improving, the learning rate falls linearly to 0 over a share
    of the budget before the run stops, so an early-stopped run ends annealed, like a full
    schedule's tail (warmup-stable-decay style). A resume part: an interrupted one goes on."""

    optional = True  # checkpoints written before it existed restore "not cooling"

    def __init__(self) -> None:
        self.start_lrs: list[float] | None = None
        self.steps = self.done = 0

    @property
    def active(self) -> bool:
        return self.start_lrs is not None

    @property
    def finished(self) -> bool:
        return self.active and self.done >= self.steps

    def begin(self, optimizer: torch.optim.Optimizer, steps: int) -> None:
        self.start_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.steps, self.done = max(steps, 1), 0

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.done += 1
        scale = max(0.0, 1.0 - self.done / self.steps)
        for group, lr in zip(optimizer.param_groups, self.start_lrs or [], strict=True):
            group["lr"] = lr * scale

    def state_dict(self) -> dict[str, object]:
        return {"start_lrs": self.start_lrs, "steps": self.steps, "done": self.done}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.start_lrs = state["start_lrs"]  # type: ignore[assignment]
        self.steps, self.done = int(state["steps"]), int(state["done"])  # type: ignore[call-overload]
