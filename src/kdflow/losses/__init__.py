"""Distillation losses: one file per method, registered by name.

A loss is an ``nn.Module`` built from ``(cfg, student_dims, teacher_dims)`` where ``cfg`` is
the validated ``distill`` section and the dims describe the feature maps (for regressors).
Calling it with ``(student: Outputs, teacher: Outputs, target, epoch)`` returns a dict of
named terms whose ``"loss"`` entry is the total, cross-entropy included.
"""

from __future__ import annotations

from kdflow.registry import Registry

LOSSES: Registry = Registry("distillation method", "kdflow.losses")
