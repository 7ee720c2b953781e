"""One seed for every generator a run may draw from."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Same seed, same numbers on CPU (its kernels are deterministic at a fixed thread count):
    torch, NumPy's global generator and Python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
