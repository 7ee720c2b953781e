"""Architectures outside the registry: ``timm:<name>``, ``torchvision:<name>`` and a user's own
``package.module:Class`` from a folder of the repository (e.g. ``models_src/``).

All are built with random weights (nothing is downloaded) and adapted by ``Adapted``. An own
module is imported only from a file inside the repository (never an installed module such as
``os``), checked before anything is imported, so DVC can track the folder it lives in.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from torch import nn

from kdflow.errors import ParamsError
from kdflow.models._adapter import Adapted, adapt_channels, drop_classifier, settle

TIMM, TORCHVISION = "timm:", "torchvision:"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_OWN = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*):({_IDENT})$")
_NOT_OURS = {"site-packages", "dist-packages", "node_modules", "__pypackages__"}
# kwargs that would load or download weights, or that the task sets
_RESERVED = {
    "pretrained", "weights", "weights_backbone", "checkpoint_path", "pretrained_cfg",
    "pretrained_cfg_overlay", "pretrained_strict", "num_classes", "in_chans", "in_channels",
}  # fmt: skip


def is_external(arch: str) -> bool:
    return ":" in arch


def repo_root() -> Path:
    """The repository the stages run in: the nearest folder up from here with dvc.yaml/.git."""
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").is_file() or (d / ".git").exists():
            return d
    return here


def _module_file(module: str, root: Path) -> Path | None:
    """The file of ``module`` inside ``root`` (not a virtualenv, not installed packages)."""
    parts = module.split(".")
    if parts[0].startswith(".") or (root / parts[0] / "pyvenv.cfg").exists():
        return None
    base = root.joinpath(*parts)
    for f in (base.with_name(f"{parts[-1]}.py"), base / "__init__.py"):
        if f.is_file() and not _NOT_OURS & set(f.relative_to(root).parts):
            return f.resolve()
    return None


def check(arch: str, key: str = "arch") -> None:
    """What can be checked without importing the package or running user code."""
    for prefix, package in ((TIMM, "timm"), (TORCHVISION, "torchvision")):
        if arch.startswith(prefix):
            if not arch[len(prefix) :]:
                raise ParamsError(f"params.yaml: {key} = {arch!r}: name a model after {prefix}")
            if importlib.util.find_spec(package) is None:
                raise ParamsError(f"params.yaml: {key} = {arch!r} needs {package} installed")
            return
    m = _OWN.match(arch)
    if not m:
        raise ParamsError(
            f"params.yaml: {key} = {arch!r} is not allowed: use a registered name, "
            "timm:<name>, torchvision:<name> or <package.module>:<Class>"
        )
    root = repo_root()
    if _module_file(m.group(1), root) is None:
        raise ParamsError(
            f"params.yaml: {key} = {arch!r}: {m.group(1)} is not a module file of this "
            f"repository ({root}); own models are imported only from its folders (models_src/)"
        )


def build(
    arch: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict[str, Any]
) -> Adapted:
    """The network ``arch`` names, with the task's input channels and a head for its classes."""
    check(arch)
    bad = sorted(_RESERVED & set(kwargs))
    if bad:
        raise ParamsError(
            f"{arch}: kwargs may not set {bad[0]} (the task sets classes and channels, "
            "models.*.weights the weights)"
        )
    if arch.startswith(TIMM):
        model = _timm(arch, num_classes, in_channels, kwargs)
    else:
        if arch.startswith(TORCHVISION):
            body = _torchvision(arch, kwargs)
        else:
            body = _own(arch, num_classes, in_channels, kwargs)
        head_name, feat_dim = drop_classifier(body, arch)
        adapt_channels(body, in_channels, arch)
        model = Adapted(body, feat_dim, num_classes, [], head_name)
    settle(model, arch, in_channels, image_size)
    return model


def _unknown(arch: str, name: str, names: list[str]) -> ParamsError:
    close = difflib.get_close_matches(name, names, n=3)
    return ParamsError(
        f"unknown architecture {arch!r}" + (f"; close: {', '.join(close)}" if close else "")
    )


def _failed(arch: str, kwargs: dict[str, Any], exc: Exception) -> ParamsError:
    first = (str(exc).strip().splitlines() or [""])[0]
    return ParamsError(f"{arch} with kwargs {kwargs}: {type(exc).__name__}: {first}")


def _timm(arch: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> Adapted:
    import timm

    name = arch[len(TIMM) :]
    if not timm.is_model(name):
        raise _unknown(arch, name, timm.list_models())
    try:
        body = timm.create_model(
            name, pretrained=False, num_classes=0, in_chans=in_channels, **kwargs
        )
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise _failed(arch, kwargs, exc) from exc
    feat_dim = getattr(body, "head_hidden_size", None) or body.num_features
    stages = []
    for info in getattr(body, "feature_info", None) or []:
        name = info.get("module", "") if isinstance(info, dict) else ""
        try:
            if name and body.get_submodule(name) is not None:
                stages.append(name)
        except AttributeError:
            pass
    head = body.pretrained_cfg.get("classifier") or "fc"
    head_name = head if isinstance(head, str) else ",".join(head)
    return Adapted(body, int(feat_dim), num_classes, stages, head_name, timm_api=True)


def _torchvision(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    name = arch[len(TORCHVISION) :]
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise _unknown(arch, name, names)
    kwargs = dict(kwargs)
    if name in ("googlenet", "inception_v3"):  # auxiliary heads would change train outputs
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise _failed(arch, kwargs, exc) from exc


def _import(module: str, path: Path) -> Any:
    """Import ``module`` from the repository (its root first on the path while importing)."""
    root = str(repo_root())
    sys.path.insert(0, root)
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # the user's code: one line (KDFLOW_DEBUG=1 shows the traceback)
        raise ParamsError(f"cannot import {module}: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(root)
    where = Path(getattr(mod, "__file__", "") or "").resolve()
    if where != path:
        raise ParamsError(f"{module} resolves to {where}, not the repository's {path}")
    return mod


def _own(arch: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    module, _, name = arch.partition(":")
    path = _module_file(module, repo_root())
    assert path is not None  # check() passed
    factory = getattr(_import(module, path), name, None)
    if not callable(factory):
        raise ParamsError(f"{arch}: {module} has no class {name}")
    kw = dict(kwargs)
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        key = "in_chans" if key == "in_channels" and "in_chans" in accepted else key
        if key in accepted:  # the task's; kwargs may not set them
            kw[key] = value
    try:
        body = factory(**kw)
    except Exception as exc:  # the user's constructor: one line
        raise _failed(arch, kwargs, exc) from exc
    if not isinstance(body, nn.Module):
        raise ParamsError(f"{arch} returned a {type(body).__name__}, not a torch.nn.Module")
    return body
