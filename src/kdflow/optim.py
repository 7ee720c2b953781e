"""Optimiser and per-step learning-rate schedule from a ``TrainConfig``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import lr_scheduler

from kdflow.config import TrainConfig


def build_optimizer(
    cfg: TrainConfig, groups: list[dict[str, Any]], total_steps: int
) -> tuple[torch.optim.Optimizer, lr_scheduler.LRScheduler]:
    """SGD (Nesterov) or AdamW, stepped once per batch; groups may carry an ``lr_mult``."""
    for g in groups:
        g["lr"] = cfg.lr * g.pop("lr_mult", 1.0)
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.momentum > 0,
        )
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(total_steps, 1)
    sched: lr_scheduler.LRScheduler
    if cfg.schedule == "onecycle":
        sched = lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total
        )
    elif cfg.schedule == "cosine":
        sched = lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    elif cfg.schedule == "multistep":
        steps = [math.ceil(m * total) for m in cfg.milestones]
        sched = lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=cfg.gamma)
    else:
        sched = lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    return opt, sched
