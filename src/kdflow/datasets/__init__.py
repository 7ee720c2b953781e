"""Datasets registry: name -> loader returning a ``RawData`` (uint8 images, int labels).

A loader receives the validated ``data`` section; add a dataset by dropping a module here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kdflow.registry import Registry

DATASETS: Registry = Registry("dataset", "kdflow.datasets")


@dataclass
class RawData:
    """A labelled train/test split as uint8 arrays shaped (N, C, H, W)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    source: str
    cleanup: Any = None  # called once prepare is done (e.g. deletes a decoded image cache)

    def close(self) -> None:
        if self.cleanup is not None:
            self.cleanup()
            self.cleanup = None

    def __post_init__(self) -> None:
        for name in ("train_x", "test_x"):
            arr = getattr(self, name)
            if arr.dtype != np.uint8 or arr.ndim != 4:
                raise ValueError(f"{name} must be uint8 (N, C, H, W), got {arr.dtype} {arr.shape}")
        self.train_y = np.asarray(self.train_y, dtype=np.int64)
        self.test_y = np.asarray(self.test_y, dtype=np.int64)
