"""Models in MLflow: logged as torch.export programs, registered, aliased, loaded back.

"pt2" (torch.export) serves without kdflow; beside it each logged model carries the stage's own
checkpoint (``extra_files/<name>.pt``, plain tensors), which is what kdflow loads back, with
``torch.load(weights_only=True)``: nothing is unpickled. Other models load only as pt2, with
MLflow's pickle deserialization off (it checks the archive first); a pickled model is refused.
A version's weights are found by the md5 its run recorded (the hash dvc.lock records), so the
``lock`` alias can name the checked-out model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.exceptions import MlflowException

from kdflow.errors import KdflowError, ParamsError
from kdflow.io import md5_file, safe_load
from kdflow.tracking.store import call, open_store

if TYPE_CHECKING:
    import torch
    from torch import nn

ALIAS = "newest"  # the version trained last
LOCK_ALIAS = "lock"  # the version whose weights are the checked-out file (what dvc.lock says)
CHECKPOINT_KEY = "kdflow_checkpoint"  # model metadata: where the kdflow checkpoint lies in it
NO_PICKLE = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


@contextlib.contextmanager
def no_pickle() -> Iterator[None]:
    """MLflow may not unpickle anything meanwhile, whatever the environment says."""
    before = os.environ.get(NO_PICKLE)
    os.environ[NO_PICKLE] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(NO_PICKLE, None)
        else:
            os.environ[NO_PICKLE] = before


def prefetch() -> None:
    """Import what logging a model needs, while the stage trains (a daemon thread).

    The first ``log_model`` of a process otherwise pays ~2-3 s on the critical path for
    torch.export's and MLflow's lazy imports and MLflow's scan of installed packages.
    """
    try:
        import mlflow.models
        import mlflow.pytorch  # noqa: F401
        import torch._dynamo
        import torch.export  # noqa: F401
        from mlflow.utils import requirements_utils

        requirements_utils._init_packages_to_modules_map()  # private; only an optimisation
    except Exception:
        pass


def log_model(
    uri: str,
    model: nn.Module,
    registered_name: str,
    example: torch.Tensor,
    metadata: dict[str, Any] | None,
    register: bool,
    checkpoint: Path | None = None,
) -> str | None:
    """Log ``model`` into the active run with a signature and input example, and its kdflow
    ``checkpoint`` beside it; register it (when ``register``) and alias the new version
    ``newest``. Returns the model URI."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    model = copy.deepcopy(model).cpu().eval()
    if example.shape[0] < 2:  # a batch of 2 lets torch.export keep the batch axis dynamic
        example = torch.cat([example, example])
    with torch.no_grad():
        out = model(example)
    signature = infer_signature(example.numpy(), out.numpy())
    reg = registered_name if register else None
    extra = [str(checkpoint)] if checkpoint is not None else None
    if checkpoint is not None:
        metadata = {**(metadata or {}), CHECKPOINT_KEY: f"extra_files/{Path(checkpoint).name}"}
    registry_log = logging.getLogger("mlflow.tracking._model_registry")
    level = registry_log.level  # "already exists, creating a new version": expected
    registry_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # torch's pt2 packer warns about CPU weights: moot here
            warnings.filterwarnings("ignore", "No complete tensor found", UserWarning)
            info = call(
                uri,
                "log the model",
                mlflow.pytorch.log_model,
                model,
                name=registered_name.removeprefix("kdflow-"),  # the model's role, not "model"
                signature=signature,
                input_example=example.numpy(),
                metadata=metadata,
                extra_files=extra,
                registered_model_name=reg,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                serialization_format="pt2",
            )
    finally:
        registry_log.setLevel(level)
    if reg and info.registered_model_version is not None:
        client = mlflow.MlflowClient()
        version = str(info.registered_model_version)
        call(uri, "set the model alias", client.set_registered_model_alias, reg, ALIAS, version)
    return info.model_uri


def version_of(client: Any, path: Path, name: str | None = None) -> Any:
    """The newest registered version (of ``name``, if given) whose run wrote the weights in
    ``path`` (matched by the md5 its run recorded), or None."""
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`kdflow.output.md5` = '{md5_file(path)}'",
        output_format="list",
        order_by=["attributes.start_time DESC"],
    )
    versions = [
        v
        for r in runs
        for v in client.search_model_versions(f"run_id = '{r.info.run_id}'")
        if name is None or v.name == name
    ]
    return max(versions, key=lambda v: int(v.version)) if versions else None


def alias_files(uri: str, files: list[Path], alias: str = LOCK_ALIAS) -> dict[str, str | None]:
    """Point ``alias`` at the registered version whose weights are each file (matched by the
    md5 its run recorded), e.g. the checked-out outputs of ``dvc.lock``. Returns, per file,
    ``"<model> v<version>"`` or None where no registered version holds those weights.
    """
    client = open_store(uri)
    out: dict[str, str | None] = {}
    try:
        for f in files:
            v = version_of(client, f)
            if v is None:
                out[str(f)] = None
                continue
            client.set_registered_model_alias(v.name, alias, v.version)
            out[str(f)] = f"{v.name} v{v.version}"
    except MlflowException as exc:
        raise KdflowError(f"MLflow at {uri}: {str(exc).splitlines()[0]}") from None
    return out


def _checkpoint(local: Path, meta: dict[str, Any]) -> Path | None:
    """The kdflow checkpoint inside a downloaded model folder (never a path outside it)."""
    rel = meta.get(CHECKPOINT_KEY)
    ckpt = (local / str(rel)).resolve() if rel else None
    ok = ckpt is not None and ckpt.is_relative_to(local.resolve()) and ckpt.is_file()
    return ckpt if ok else None


def _weights(local: Path, meta: dict[str, Any], uri: str) -> dict[str, Any]:
    """The state dict of a downloaded model folder, never unpickling: kdflow's checkpoint with
    weights_only, else a pt2 program that MLflow checks is pickle-free; a pickle is refused."""
    ckpt = _checkpoint(local, meta)
    if ckpt is not None:
        loaded = safe_load(ckpt, f"weights {uri}")
        meta.update({k: v for k, v in loaded.items() if k != "state_dict"})
        return dict(loaded.get("state_dict") or {})
    if not (local / "data" / "model.pt2").is_file():
        raise ParamsError(
            f"weights {uri} is not a pt2 (torch.export) model; kdflow never unpickles a model "
            "(MLflow serialization_format 'pickle'): log it with serialization_format='pt2'"
        )
    import mlflow.pytorch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = mlflow.pytorch.load_model(str(local), map_location="cpu")
    except MlflowException as exc:  # e.g. a pt2 archive holding pickles: refused unread
        raise ParamsError(f"weights {uri} refused: {str(exc).splitlines()[0][:200]}") from None
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def download(uri: str, store: str, dest: str) -> tuple[Path, dict[str, Any], str]:
    """A logged model's folder (downloaded into ``dest``), metadata and what the URI resolved
    to (``name/version``); MLflow unpickles nothing meanwhile. One line (exit 2) if it does
    not resolve."""
    import mlflow.artifacts
    import mlflow.models

    client = open_store(store)
    try:
        with no_pickle():
            info = mlflow.models.get_model_info(uri)  # reads the MLmodel file (YAML)
            resolved = f"run {info.run_id}"
            if uri.startswith("models:/"):
                name, _, ref = uri.removeprefix("models:/").partition("@")
                if ref:
                    v = client.get_model_version_by_alias(name, ref)
                else:
                    name, _, number = name.partition("/")
                    v = client.get_model_version(name, number)
                resolved = f"{v.name}/{v.version} (run {v.run_id})"
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dest))
    except (MlflowException, OSError) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ParamsError(f"weights {uri} does not resolve in the store {store}: {msg}") from None
    return local, dict(info.metadata or {}), resolved


def fetch_checkpoint(uri: str, store: str, dest: str) -> Path | None:
    """The kdflow checkpoint logged with a model (downloaded into ``dest``), or None."""
    local, meta, _ = download(uri, store, dest)
    return _checkpoint(local, meta)


def load_logged_weights(uri: str, store: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A logged model's weights, metadata and what the URI resolved to (``name/version``).

    Nothing is unpickled (``_weights``). A URI that does not resolve, or names a model kdflow
    will not load, is the user's to fix: one line, exit 2.
    """
    with tempfile.TemporaryDirectory(prefix="kdflow-weights-") as tmp:
        local, meta, resolved = download(uri, store, tmp)
        try:
            with no_pickle():
                state = _weights(local, meta, uri)
        except KdflowError as exc:
            raise ParamsError(str(exc)) from None
    return state, meta, resolved
