"""Batches for the Trainer: stored pixels, a seeded order, then augmentation on the device.

The order of the batches depends only on (seed, epoch), so a run resumed at an epoch boundary
sees exactly the batches an uninterrupted run would have seen. Batches come either from the
host (a DataLoader reading rows from disk) or, when the split fits in a share of the device's
memory, from a uint8 copy held on the device; both give the same stored batches in the same
order, and ``Feed`` turns either into the model's input on the device (crop, flip, normalise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psutil
import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
)

from kdflow.augment import augment
from kdflow.distributed import initialized
from kdflow.images import Images


class TensorBatches(Dataset):
    """Images and labels as stored; fetches a whole batch at once through ``__getitems__``.

    Images on disk (``Images``) come as uint8 pixels, tensors as they are. Returns
    ``(x, y, idx)``: the index lets objectives look up cached teacher outputs.
    """

    def __init__(self, x: Tensor | Images, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.x.raw(idx) if isinstance(self.x, Images) else self.x[idx]
        return x, self.y[idx], idx

    def nbytes(self) -> int:
        """Bytes of the stored split (uint8 images: one per pixel)."""
        shape = self.x.shape
        per = 1 if isinstance(self.x, Images) else self.x.element_size()
        return int(torch.Size(shape).numel()) * per

    def stored(self) -> Tensor:
        """The whole split as stored (what the device-memory path copies to the device)."""
        return self.x.raw(slice(None)) if isinstance(self.x, Images) else self.x


class Feed:
    """Stored batch -> model input on the device: augmentation (random numbers from the
    Trainer's CPU generator), then the task's normalisation for uint8 images."""

    def __init__(
        self, data: TensorBatches, device: torch.device, augment: bool, policy: str, hflip: bool
    ) -> None:
        self.augment, self.policy, self.hflip = augment, policy, hflip
        self.stats = None
        if isinstance(data.x, Images):
            mean, std = (
                torch.tensor(v).view(1, -1, 1, 1) for v in (data.x.mean_values, data.x.std_values)
            )
            self.stats = (mean.to(device), std.to(device))

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if self.augment:
            x = augment(x, gen, self.policy, self.hflip)
        if self.stats is not None:  # the arithmetic of Images.normalize
            x = (x.float().div_(255.0) - self.stats[0]) / self.stats[1]
        return x


class DeviceBatches:
    """The split held in device memory; batches are gathers in the loader's order."""

    def __init__(self, data: TensorBatches, sampler: Sampler, batch_size: int,
                 device: torch.device) -> None:  # fmt: skip
        self.batches = BatchSampler(sampler, batch_size, drop_last=False)
        self.x, self.y = data.stored().to(device), data.y.to(device)
        self.device = device

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for b in self.batches:
            idx = torch.as_tensor(b, dtype=torch.long)
            on = idx.to(self.device, non_blocking=True)
            yield self.x[on], self.y[on], idx


def fits_device(data: TensorBatches, device: torch.device, share: float) -> bool:
    """Whether the split takes at most ``share`` of the device's memory: a GPU's total, or on
    CPU the RAM now available (gathers from a resident copy beat per-batch reads there too)."""
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
    elif device.type == "cpu":
        memory = psutil.virtual_memory().available
    else:
        return False
    return data.nbytes() <= share * memory


def _whole_batch(batch: Any) -> Any:
    return batch  # __getitems__ already returns the collated batch


def make_loader(
    data: TensorBatches,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    workers: int = 0,
    pin_memory: bool = False,
    device: torch.device | None = None,
) -> tuple[DataLoader | DeviceBatches, Callable[[int], None]]:
    """A loader whose order depends only on (seed, epoch); returns it and ``set_epoch``.

    ``device`` set: the split is held there and batches are gathered from it (no reading,
    no workers); otherwise ``workers`` > 0 reads batches in worker processes.
    """
    if initialized():
        sampler: Sampler | None = DistributedSampler(data, shuffle=shuffle, seed=seed)
        set_epoch = sampler.set_epoch  # type: ignore[union-attr]
    else:
        gen = torch.Generator()
        sampler = RandomSampler(data, generator=gen) if shuffle else None

        def set_epoch(epoch: int) -> None:
            gen.manual_seed(seed * 100_003 + epoch)

    if device is not None:
        order = sampler if sampler is not None else range(len(data))
        return DeviceBatches(data, order, batch_size, device), set_epoch  # type: ignore[arg-type]
    loader = DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=_whole_batch,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        # its own generator: each pass otherwise draws the workers' base seed from the global
        # one, shifting the dropout masks drawn after it, and results would differ from the
        # device-memory path's (which draws nothing) for any model with dropout
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, set_epoch
