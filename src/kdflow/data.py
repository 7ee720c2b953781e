"""Batches for the Trainer: images read per batch, optional augmentation, a seeded order.

The order of the batches depends only on (seed, epoch), so a run resumed at an epoch boundary
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from kdflow.distributed import initialized
from kdflow.images import Images


class TensorBatches(Dataset):
    """Images and labels; fetches a whole batch at once through ``__getitems__``.

    Images on disk (``Images``) are read per batch; augmentation works on their uint8 pixels
    before normalisation (padding with 0, the background). Returns ``(x, y, idx)``: the index
    lets objectives look up cached teacher outputs.
    """

    def __init__(
        self,
        x: Tensor | Images,
        y: Tensor,
        augment: bool = False,
        policy: str = "pad_crop",
        hflip: bool = True,
    ) -> None:
        self.x, self.y = x, y
        self.transform = None
        if augment:
            from torchvision.transforms import v2

            size = x.shape[-1]
            if policy == "resized_crop":  # ImageNet-style
                steps = [v2.RandomResizedCrop(size, antialias=True)]
            else:  # CIFAR-style
                steps = [v2.RandomCrop(size, padding=max(1, size // 8), fill=0)]
            self.transform = v2.Compose(steps + ([v2.RandomHorizontalFlip()] if hflip else []))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        if isinstance(self.x, Images):
            if self.transform is None:
                x = self.x[idx]
            else:
                u8 = self.x.raw(idx)
                x = self.x.normalize(torch.stack([self.transform(img) for img in u8]))
        else:
            x = self.x[idx]
            if self.transform is not None:
                x = torch.stack([self.transform(img) for img in x])
        return x, self.y[idx], idx


def _whole_batch(batch: Any) -> Any:
    return batch  # __getitems__ already returns the collated batch


def make_loader(
    data: TensorBatches,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    workers: int = 0,
    pin_memory: bool = False,
) -> tuple[DataLoader, Callable[[int], None]]:
    """A loader whose order depends only on (seed, epoch); returns it and ``set_epoch``.

    ``workers`` > 0 reads and augments batches in worker processes (seeded from the main
    process's generator, which the Trainer seeds per epoch: resumable, reproducible).
    """
    if initialized():
        sampler = DistributedSampler(data, shuffle=shuffle, seed=seed)
        set_epoch = sampler.set_epoch
    else:
        gen = torch.Generator()
        sampler = RandomSampler(data, generator=gen) if shuffle else None

        def set_epoch(epoch: int) -> None:
            gen.manual_seed(seed * 100_003 + epoch)

    loader = DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=_whole_batch,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
    )
    return loader, set_epoch
