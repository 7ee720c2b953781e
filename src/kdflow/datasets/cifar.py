"""CIFAR-10 and CIFAR-100 through torchvision, from a local root (download only if asked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdflow.datasets import DATASETS, RawData
from kdflow.errors import KdflowError


def _cifar(cfg, name: str) -> RawData:
    import torchvision

    root = Path(cfg.root) if cfg.root else Path("data/raw")
    cls = getattr(torchvision.datasets, name)
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=cfg.download)
    except RuntimeError:
        raise KdflowError(
            f"dataset {name} not found under {root}; put torchvision's {name} files there "
            "(data.root) or set data.download: true"
        ) from None

    def chw(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))

    return RawData(
        chw(train.data),
        np.array(train.targets),
        chw(test.data),
        np.array(test.targets),
        list(train.classes),
        str(root),
    )


@DATASETS.register("cifar10")
def cifar10(cfg) -> RawData:
    return _cifar(cfg, "CIFAR10")


@DATASETS.register("cifar100")
def cifar100(cfg) -> RawData:
    return _cifar(cfg, "CIFAR100")
