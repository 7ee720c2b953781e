"""Weights from outside the pipeline: a kdflow checkpoint, an MLflow model, a state-dict file.

``models.<role>.weights`` says where a model's first weights come from: nothing (random
init), a kdflow checkpoint, ``models:/<name>@<alias>`` / ``models:/<name>/<version>`` /
``runs:/<id>/<path>`` in the tracking store, or a plain state dict on disk (e.g. torchvision
ImageNet weights the user already has; nothing is downloaded). A *finished* model (a kdflow
checkpoint or a logged kdflow model, with a head for this task's classes) is verified and can
be adopted as is; a backbone (a state dict) gets a new head for the task and is fine-tuned.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdflow.checkpoint import FORMAT, describe, load_model
from kdflow.errors import KdflowError, ParamsError
from kdflow.io import md5_file, safe_load
from kdflow.models import build_for_task, model_spec
from kdflow.models._foreign import own_names

URI_PREFIXES = ("models:/", "runs:/")


@dataclass(frozen=True)
class Origin:
    """Where a model's weights came from: recorded in its checkpoint and MLflow run."""

    weights: str
    kind: str  # checkpoint | mlflow | state_dict
    digest: str  # md5 of the file (the hash dvc.lock records), or the resolved MLflow model
    finished: bool  # has a head for this task's classes: may be adopted without training
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_uri(weights: str) -> bool:
    return weights.startswith(URI_PREFIXES)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _skip(key: str) -> bool:
    return key.endswith("num_batches_tracked")  # older files lack it; it is not a weight


def adapt_state(model: nn.Module, state: dict[str, Any], source: str) -> str:
    """Load a foreign state dict into ``model``, strictly: every tensor of the file is used and
    every tensor of the model is filled, except the classifier head (new when its classes
    differ). The original network's names are mapped (``own_names``), RGB filters are summed
    for 1-channel input, the small-image stem of ``tv_resnet*`` is left new. Anything else
    means another architecture: one line naming the first tensor at fault, exit 2."""
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}
    state, file_name = own_names(model, state)
    own = model.state_dict()
    loaded, notes, unused, shape = {}, [], [], []
    for key, value in state.items():
        target = own.get(key)
        if key.startswith("head."):
            if target is not None and value.shape == target.shape:
                loaded[key] = value
            else:
                notes.append("new head for this task's classes")
        elif _skip(key):
            if target is not None and value.shape == target.shape:
                loaded[key] = value
        elif target is None:
            unused.append(f"{file_name[key]} in the file is not used")
        elif value.shape == target.shape:
            loaded[key] = value
        elif value.dim() == 4 and value.shape[2:] == target.shape[2:] and target.shape[1] == 1:
            loaded[key] = value.sum(dim=1, keepdim=True)  # RGB filters -> one grey channel
            notes.append(f"{file_name[key]}: RGB filters summed for 1-channel input")
        elif key == "stem.0.weight" and value.dim() == 4 and value.shape[0] == target.shape[0]:
            notes.append(  # the small-image stem stays as initialised
                f"stem conv re-initialised ({tuple(value.shape[2:])} kernel in the file, "
                f"{tuple(target.shape[2:])} here: the small-image stem)"
            )
        else:
            shape.append(
                f"{file_name[key]} is {tuple(value.shape)} in the file, {tuple(target.shape)} here"
            )
    missing = [
        f"{file_name[k]} is missing from the file"
        for k in own
        if k not in state and not k.startswith("head.") and not _skip(k)
    ]
    bad = unused + shape + missing
    if bad:
        raise ParamsError(
            f"weights file {source} does not fit this architecture: {bad[0]} ({len(unused)} of "
            f"{len(state)} file tensors unused, {len(missing)} of {len(own)} model tensors "
            f"missing, {len(shape)} of another shape); check models.*.arch"
        )
    model.load_state_dict(loaded, strict=False)
    return "; ".join(dict.fromkeys(notes))


def _check_finished(meta: dict[str, Any], task: Any, source: str) -> None:
    """A finished model must predict this task's classes from this task's input."""
    want = {
        "num_classes": task.num_classes,
        "in_channels": task.in_channels,
        "image_size": task.image_size,
    }
    for key, value in want.items():
        have = meta.get(key)
        if have is not None and int(have) != int(value):
            raise ParamsError(
                f"teacher/student weights {source} has {key} = {have} but the task has {value}; "
                "use a model trained on this task's classes and input, or a backbone state dict"
            )


def load_initial(
    cfg: Any, task: Any, role: str, external: Path | None = None, store: str | None = None
) -> tuple[nn.Module, Origin | None]:
    """The model ``models.<role>`` describes, with its first weights where params say.

    ``external`` is the folder DVC tracks for this model's files; ``store`` the tracking URI
    that ``models:/`` and ``runs:/`` resolve in.
    """
    spec = model_spec(cfg)
    model = build_for_task(spec, task)
    weights = cfg.weights
    if weights is None:
        return model, None
    key = f"models.{role}.weights"
    if is_uri(weights):
        from kdflow.tracking import load_logged_weights

        state, meta, resolved = load_logged_weights(weights, store or "")
        _check_finished(meta, task, weights)
        logged_spec = meta.get("spec")
        if logged_spec and {k: logged_spec.get(k) for k in spec} != spec:
            raise ParamsError(
                f"{key} = {weights} is a {describe(logged_spec)} but models.{role} asks for "
                f"{describe(spec)}; set models.{role}.arch/width/depth to match"
            )
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            line = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc
            raise ParamsError(f"{key} = {weights} does not fit {describe(spec)} ({line})") from None
        return model, Origin(weights, "mlflow", resolved, finished=True)
    path = Path(weights)
    if external is not None and not _inside(path, external):
        raise ParamsError(
            f"{key} = {weights} is outside {external}/, the folder DVC tracks for it; move the "
            "file there so a changed file re-runs what depends on it"
        )
    if not path.is_file():
        raise ParamsError(f"{key} = {weights}: no such file")
    obj = safe_load(path, f"{role} weights")
    if obj.get("format") == FORMAT:
        try:
            finished, ckpt = load_model(path, f"{key} {weights}", spec, task.num_classes)
        except KdflowError as exc:  # another architecture or class count: the params' fault
            raise ParamsError(str(exc)) from None
        _check_finished(ckpt, task, weights)
        return finished, Origin(weights, "checkpoint", md5_file(path), finished=True)
    state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    note = adapt_state(model, state, weights)
    if note:
        print(f"[{role}] {weights}: {note}", file=sys.stderr, flush=True)
    return model, Origin(weights, "state_dict", md5_file(path), finished=False, note=note)


def check_adoptable(origin: Origin | None, fine_tune: bool) -> None:
    """Adopting without training needs a finished model: say so in one line otherwise."""
    if origin is not None and not fine_tune and not origin.finished:
        raise ParamsError(
            f"{origin.weights} is a backbone without a head for this task; it must be "
            "fine-tuned (set fine_tune: true for this model)"
        )
