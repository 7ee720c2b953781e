"""How each stage builds and trains its model from params: one recipe for stages and benchmarks.

Every recipe takes a ``fit`` that runs one training (a plain ``Trainer`` by default; a stage
passes its resumable, logged one), so a benchmark trains exactly what the stage trains: the
same seed at the same point, model, first weights, labels and objective.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import Tensor, nn

from kdflow.config import Params, TrainConfig, TransferTrainConfig
from kdflow.distill import DistillObjective, build_objective, initial_student
from kdflow.models import build_for_task
from kdflow.pretrained import Origin, check_adoptable, load_initial
from kdflow.seed import seed_everything
from kdflow.strategies import STRATEGIES
from kdflow.tasks import Task, labelled_train
from kdflow.trainer import FitResult, Trainer
from kdflow.transfer import Phase, TransferNet, build_phases, strategy_config, train_phases


class Fit(Protocol):
    def __call__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        train: tuple[Tensor, Tensor],
        val: tuple[Tensor, Tensor] | None = None,
        **trainer_kwargs: Any,
    ) -> FitResult: ...


def plain_fit(
    cfg: TrainConfig,
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor] | None = None,
    **trainer_kwargs: Any,
) -> FitResult:
    """One training without files or tracking (progress lines silenced)."""
    trainer_kwargs.pop("phase", None)
    with contextlib.redirect_stderr(io.StringIO()):
        return Trainer(cfg, model, train, val, **trainer_kwargs).fit()


# --- train@teacher / train@student ---------------------------------------------------------


def initial_model(
    params: Params, role: str, task: Task, external: Path | None = None, store: str | None = None
) -> tuple[nn.Module, Origin | None]:
    """``models.<role>`` with its first weights (random init depends on the seed only)."""
    seed_everything(getattr(params.train, role).seed)
    mcfg = getattr(params.models, role)
    model, origin = load_initial(mcfg, task, role, external, store)
    check_adoptable(origin, mcfg.fine_tune)
    return model, origin


def adopts(params: Params, role: str, origin: Origin | None) -> bool:
    """A finished model with ``fine_tune: false`` is verified and used as is, not trained."""
    return origin is not None and not getattr(params.models, role).fine_tune


def train_role(
    params: Params, role: str, task: Task, model: nn.Module, fit: Fit = plain_fit
) -> FitResult:
    """The teacher or the student alone, on its share of the labels."""
    cfg = getattr(params.train, role)
    seed_everything(cfg.seed)
    train = labelled_train(task, cfg.label_fraction, params.data.seed)
    return fit(cfg, model, train, task["val"], name=role)


def trained_role(params: Params, role: str, task: Task) -> tuple[nn.Module, FitResult | None]:
    """``train@<role>`` without files: initial model, then trained unless adopted."""
    model, origin = initial_model(params, role, task)
    result = None if adopts(params, role, origin) else train_role(params, role, task, model)
    return model.eval(), result


# --- distill -------------------------------------------------------------------------------


def distill_setup(
    params: Params,
    task: Task,
    teachers: list[nn.Module],
    teacher_hashes: list[str],
    student_path: str | Path | None = None,
    external: Path | None = None,
    store: str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[nn.Module, DistillObjective, str | None]:
    """The student distillation starts from and its objective (with the logit cache)."""
    seed_everything(params.distill.train.seed)
    model, init_hash = initial_student(
        params.distill.init, params.models.student, task, student_path, external, store
    )
    objective = build_objective(
        params.distill, model, teachers, teacher_hashes, task["train"][0], task.content_hash,
        cache_dir,
    )  # fmt: skip
    return model, objective, init_hash


def distill_train(
    params: Params,
    task: Task,
    model: nn.Module,
    objective: DistillObjective,
    fit: Fit = plain_fit,
    **trainer_kwargs: Any,
) -> FitResult:
    """Distillation on every training image; labels only where train.student keeps them."""
    fraction = params.train.student.label_fraction  # the same labels as the student alone
    train = labelled_train(task, fraction, params.data.seed, hide=True)
    cfg = params.distill.train
    return fit(cfg, model, train, task["val"], objective=objective, **trainer_kwargs)


def distilled(
    params: Params,
    task: Task,
    teachers: list[nn.Module],
    teacher_hashes: list[str],
    cache_dir: str | Path | None = None,
    student_path: str | Path | None = None,
) -> tuple[nn.Module, FitResult]:
    """``distill`` without files or tracking."""
    model, objective, _ = distill_setup(
        params, task, teachers, teacher_hashes, student_path, cache_dir=cache_dir
    )
    return model.eval(), distill_train(params, task, model, objective)


# --- transfer@<strategy> -------------------------------------------------------------------


def from_scratch(strategy: str) -> bool:
    return bool(STRATEGIES.meta(strategy).get("from_scratch", False))


def transfer_setup(
    params: Params, strategy: str, source: nn.Module, spec: dict[str, Any], old: Task, new: Task,
    train_x: Tensor | None = None,
) -> tuple[TransferNet, list[Phase]]:  # fmt: skip
    """The two-headed model a strategy starts from (``source``, or fresh), and its phases."""
    seed_everything(params.transfer.train.seed)
    if from_scratch(strategy):
        source = build_for_task(spec, new, num_classes=old.num_classes)
    model = TransferNet(source, new.num_classes)
    x = new["train"][0] if train_x is None else train_x
    return model, build_phases(strategy, params.transfer.options_for(strategy), model, x)


def transfer_train(
    options: dict[str, Any],
    cfg: TrainConfig,
    model: TransferNet,
    phases: list[Phase],
    train: tuple[Tensor, Tensor],
    fit: Fit = plain_fit,
    label: str = "transfer",
) -> dict[str, Any]:
    """Each phase in turn (solved, or trained at the strategy's lr); what solved phases chose.

    ``label`` is the strategy. With ``patience`` set, the number of epochs is first chosen on
    held-out shots (``transfer_epochs``), then the model is trained on every shot.
    """
    chosen: dict[str, Any] = {}
    if isinstance(cfg, TransferTrainConfig) and cfg.patience is not None:
        cfg, chosen["early_stopping"] = transfer_epochs(options, cfg, model, train, label)

    def one(i: int, phase: Phase, pcfg: TrainConfig) -> object:
        name = f"{label}:{phase.name}" if len(phases) > 1 else label
        return fit(pcfg, model, train, None, objective=phase.objective,
                   param_groups=phase.param_groups, phase=str(i), name=name)  # fmt: skip

    return {**chosen, **train_phases(model, phases, strategy_config(cfg, options), train, one)}


def transfer_epochs(
    options: dict[str, Any],
    cfg: TransferTrainConfig,
    model: TransferNet,
    train: tuple[Tensor, Tensor],
    strategy: str,
) -> tuple[TrainConfig, dict[str, Any]]:
    """Early stopping without a validation split: train a copy of ``model`` on a stratified
    share of the shots, stop when the held-out rest stops improving, and return the config
    that trains the best number of epochs on every shot (no floor, no stopping)."""
    from sklearn.model_selection import train_test_split  # here: 1-2 s of import most stages skip

    x, y = train
    fit_idx, held_idx = train_test_split(
        np.arange(len(y)), test_size=cfg.holdout, stratify=y.numpy(), random_state=cfg.seed
    )
    part, held = (x[fit_idx], y[fit_idx]), (x[held_idx], y[held_idx])
    trial = copy.deepcopy(model)
    phases = build_phases(strategy, options, trial, part[0])
    best: list[int] = []

    def one(i: int, phase: Phase, pcfg: TrainConfig) -> object:
        result = plain_fit(pcfg, trial, part, held, objective=phase.objective,
                           param_groups=phase.param_groups)  # fmt: skip
        best.append(result.best_epoch + 1)
        return result

    train_phases(trial, phases, strategy_config(cfg.model_copy(update={"select": "best"}), options),
                 part, one)  # fmt: skip
    if not best:  # nothing trained (a solved probe): nothing to choose
        return cfg, {}
    epochs = max(best)
    update = {"epochs": epochs, "min_steps": 0, "max_steps": None, "patience": None}
    return cfg.model_copy(update=update), {"epochs": epochs, "holdout": cfg.holdout}


def transferred(
    params: Params,
    strategy: str,
    source: nn.Module,
    spec: dict[str, Any],
    old: Task,
    new: Task,
    train: tuple[Tensor, Tensor] | None = None,
) -> TransferNet:
    """``transfer@<strategy>`` without files, on a copy of ``source`` (``train``: some shots)."""
    train = new["train"] if train is None else train
    model, phases = transfer_setup(
        params, strategy, copy.deepcopy(source), spec, old, new, train[0]
    )
    opts = params.transfer.options_for(strategy)
    transfer_train(opts, params.transfer.train, model, phases, train, label=strategy)
    return model.eval()
