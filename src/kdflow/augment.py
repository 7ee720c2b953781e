"""Random crop and flip of a whole batch at once, on whichever device holds the batch.

The random numbers are drawn on the CPU from the Trainer's generator and only then moved to
the batch's device, so the host path and the device-memory path see the same crops and flips
for a given seed. A crop is one gather over the batch (no Python loop over images).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def pad_crop(x: Tensor, gen: torch.Generator, pad: int) -> Tensor:
    """CIFAR-style: pad every side with 0 (the background), then crop back at a random place."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (n, h, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (n, 1, w)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def resized_crop(
    x: Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.08, 1.0)
) -> Tensor:
    """ImageNet-style: a random area (``scale``) and aspect ratio (3/4 to 4/3), resized back to
    the image size with bilinear sampling; one affine grid for the batch."""
    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(*scale, generator=gen)
    log_ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    ratio = torch.exp(log_ratio)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sw)  # centre, in [-1, 1] coordinates
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sh)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, cx, sh, cy
    theta = theta.to(x.device)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255).to(x.dtype) if x.dtype == torch.uint8 else out


def hflip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Each image mirrored with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def augment(x: Tensor, gen: torch.Generator, policy: str, flip: bool) -> Tensor:
    """The training augmentation of params (``augment_policy``, ``hflip``) on a batch."""
    if policy == "resized_crop":
        x = resized_crop(x, gen)
    else:
        x = pad_crop(x, gen, max(1, x.shape[-1] // 8))
    return hflip(x, gen) if flip else x
