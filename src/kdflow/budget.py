"""How much a run trains: each process's batch, and the optimizer steps of an epoch.

``batch_size`` is the global batch, split evenly over the processes, so the same params give
the same optimisation (steps, learning rate, batch) on one process or many.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from torch import Tensor

from kdflow.config import TrainConfig
from kdflow.data import TensorBatches, make_loader
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


def repeats(min_steps: int, epochs: int, batches: int) -> int:
    """Passes over the data per epoch so that the run makes at least ``min_steps`` steps."""
    return max(1, math.ceil(min_steps / max(epochs * batches, 1)))


class Budget:
    """The seeded loader of this process and how many times an epoch goes round it.

    A budget counts optimizer steps: a small dataset goes round several times per epoch so
    that the whole run makes at least ``min_steps`` steps.
    """

    def __init__(self, data: TensorBatches, cfg: TrainConfig, pin_memory: bool) -> None:
        per_rank = per_rank_batch(cfg.batch_size, world_size())
        self.loader, self.set_epoch = make_loader(
            data, per_rank, cfg.seed, workers=cfg.workers, pin_memory=pin_memory
        )
        self.repeats = repeats(cfg.min_steps, cfg.epochs, len(self.loader))
        self.steps = len(self.loader) * self.repeats  # optimizer steps of an epoch

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, Tensor, int]]:
        """Batches of the epoch, each with the position of its first sample on this rank."""
        for r in range(self.repeats):
            self.set_epoch(epoch * self.repeats + r)
            pos = 0
            for x, y, idx in self.loader:
                yield x, y, idx, pos
                pos += len(y)
