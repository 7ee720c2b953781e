"""Distillation around the shared Trainer: frozen teachers, the teacher-output cache, the objective.

The teacher always runs in eval mode without autograd: its BatchNorm statistics never move
and it never receives gradients.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdflow.checkpoint import load_model
from kdflow.config import DistillConfig
from kdflow.errors import KdflowError
from kdflow.io import atomic_torch_save, safe_load, sha256_file
from kdflow.losses import LOSSES
from kdflow.losses._base import DistillLoss
from kdflow.metrics import average_logits, predict
from kdflow.models import model_spec, resolve_layers
from kdflow.objective import Objective
from kdflow.outputs import Outputs
from kdflow.pretrained import load_initial


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients, for good: ``train()`` calls on it are ignored."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    model.train = lambda mode=True: model  # type: ignore[method-assign]
    return model


@torch.no_grad()
def probe_dims(model: nn.Module, x: Tensor) -> list[tuple[int, ...]]:
    """Feature shapes of each stage, found with an eval-mode forward (BN stats untouched)."""
    was = model.training
    model.eval()
    x = x.to(next(model.parameters()).device)
    dims = [tuple(f.shape[1:]) for f in model.forward_all(x).features]
    model.train(was)
    return dims


def cache_key(teacher_hashes: list[str], data_hash: str) -> str:
    """Cached logits are valid for exactly these teacher checkpoints and this data."""
    return hashlib.sha256("|".join([*teacher_hashes, data_hash]).encode()).hexdigest()[:20]


def ensemble_logits(teachers: list[nn.Module], x: Tensor) -> Tensor:
    """What the teacher(s) say about ``x``: the mean logits of an ensemble."""
    return average_logits([predict(t, x) for t in teachers])


def load_teachers(
    paths: list[str | Path], num_classes: int, device: torch.device
) -> tuple[list[nn.Module], list[str]]:
    """Frozen teachers checked against the task, and their checkpoint hashes (for caches)."""
    teachers = [
        freeze(load_model(p, "teacher", expect_classes=num_classes)[0].to(device)) for p in paths
    ]
    return teachers, [sha256_file(p) for p in paths]


def cached_teacher_logits(
    teachers: list[nn.Module], x: Tensor, key: str, cache_dir: str | Path
) -> Tensor:
    """Teacher logits for every training image, computed once and kept on disk by key."""
    path = Path(cache_dir) / f"teacher_logits_{key}.pt"
    if path.is_file():
        try:
            logits = safe_load(path, "teacher cache")["logits"]
            if logits.shape[0] == len(x):
                return logits
        except (KdflowError, KeyError):  # a damaged cache is simply recomputed
            pass
    logits = ensemble_logits(teachers, x)
    atomic_torch_save(path, {"logits": logits, "key": key})
    return logits


class DistillObjective(Objective):
    """Student loss against the teacher(s): online (teacher forward each step) or cached."""

    def __init__(
        self, loss: DistillLoss, teachers: list[nn.Module], cached: Tensor | None = None
    ) -> None:
        super().__init__()
        self.loss = loss  # a submodule: FitNets' regressor trains and is checkpointed with it
        self._teachers = teachers  # plain list: never saved, never optimised
        self.cached = cached

    def teacher_outputs(self, x: Tensor, idx: Tensor) -> Outputs:
        if self.cached is not None:
            return Outputs(self.cached[idx].to(x.device))
        for t in self._teachers:
            if next(t.parameters()).device != x.device:
                t.to(x.device)
        # fp32 even under AMP: the same precision as the cached logits (bf16 moved them ~3e-3)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.loss.needs_features:
                out = self._teachers[0](x, with_features=True)
                if len(self._teachers) > 1:
                    out.logits = average_logits([t(x) for t in self._teachers])
                return out
            return Outputs(average_logits([t(x) for t in self._teachers]))

    def forward(
        self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, epoch: int
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        if self.loss.needs_features:
            student = model(x, with_features=True)
        else:
            student = Outputs(model(x))
        terms = self.loss(student, self.teacher_outputs(x, idx), y, epoch)
        parts = {k: v for k, v in terms.items() if k != "loss"}
        return terms["loss"], student.logits, parts

    def extra_state(self) -> dict[str, Any]:
        """The loss's state beyond its parameters (an adversary's), for resume checkpoints."""
        return self.loss.extra_state()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.loss.load_extra_state(state)


def build_objective(
    cfg: DistillConfig,
    student: nn.Module,
    teachers: list[nn.Module],
    teacher_hashes: list[str],
    train_x: Tensor,
    data_hash: str,
    cache_dir: str | Path | None,
) -> DistillObjective:
    """The distillation objective the params ask for, with the logit cache where it is valid.

    The cache holds when inputs repeat exactly (no augmentation) and the method reads logits
    only; ``objective.cached is not None`` says whether it is used.
    """
    probe = train_x[:2]
    options = resolve_layers(cfg.method, cfg.options(), student, teachers[0])  # named layers
    dims = probe_dims(student, probe), probe_dims(teachers[0], probe)
    loss = LOSSES.build(cfg.method, options, *dims)
    cached = None
    if cfg.cache_teacher and not cfg.train.augment and not loss.needs_features and cache_dir:
        key = cache_key(teacher_hashes, data_hash)
        cached = cached_teacher_logits(teachers, train_x, key, cache_dir)
    return DistillObjective(loss, teachers, cached)


def initial_student(
    init: str,
    spec: Any,
    task: Any,
    student_path: str | Path,
    external: Path | None = None,
    store: str | None = None,
) -> tuple[nn.Module, str | None]:
    """The student distillation starts from: ``models/student.pt`` (``init: student``) or the
    student params describe (``scratch``: random, or ``models.student.weights``).

    Returns the model and, when it starts from a file, that file's hash (for resumes).
    """
    if init == "student":
        model, _ = load_model(student_path, "student", model_spec(spec), task.num_classes)
        return model, sha256_file(student_path)
    model, origin = load_initial(spec, task, "student", external, store)
    return model, origin.digest if origin else None
