"""Batches for the Trainer: in-memory tensors, optional augmentation, a seeded order.

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


class TensorBatches(Dataset):
    """In-memory images and labels; fetches a whole batch at once through ``__getitems__``.

    Returns ``(x, y, idx)``: the index lets objectives look up cached teacher outputs.
    """

    def __init__(self, x: Tensor, y: Tensor, augment: bool = False) -> None:
        self.x, self.y = x, y
        self.transform = None
        if augment:
            from torchvision.transforms import v2

            pad = max(1, x.shape[-1] // 8)
            self.transform = v2.Compose(
                [v2.RandomCrop(x.shape[-1], padding=pad), v2.RandomHorizontalFlip()]
            )

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.x[idx]
        if self.transform is not None:
            x = torch.stack([self.transform(img) for img in x])
        return x, self.y[idx], idx


def _whole_batch(batch: Any) -> Any:
    return batch  # __getitems__ already returns the collated batch


def make_loader(
    data: TensorBatches, batch_size: int, seed: int, shuffle: bool = True
) -> tuple[DataLoader, Callable[[int], None]]:
    """A loader whose order depends only on (seed, epoch); returns it and ``set_epoch``."""
    if initialized():
        sampler = DistributedSampler(data, shuffle=shuffle, seed=seed)
        set_epoch = sampler.set_epoch
    else:
        gen = torch.Generator()
        sampler = RandomSampler(data, generator=gen) if shuffle else None

        def set_epoch(epoch: int) -> None:
            gen.manual_seed(seed * 100_003 + epoch)

    loader = DataLoader(data, batch_size=batch_size, sampler=sampler, collate_fn=_whole_batch)
    return loader, set_epoch
