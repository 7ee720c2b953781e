"""Models in MLflow: logged as torch.export programs, registered, aliased, loaded back.

"pt2" (torch.export) needs no pickle to load: nothing unsafe runs, no kdflow import is needed.
A version's weights are found by the md5 its run recorded (the hash dvc.lock records), so the
``lock`` alias can name the checked-out model.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.exceptions import MlflowException

from kdflow.errors import KdflowError, ParamsError
from kdflow.io import md5_file
from kdflow.tracking.store import call, open_store

if TYPE_CHECKING:
    import torch
    from torch import nn

ALIAS = "newest"  # the version trained last
LOCK_ALIAS = "lock"  # the version whose weights are the checked-out file (what dvc.lock says)


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
) -> str | None:
    """Log ``model`` into the active run with a signature and input example; register it
    (when ``register``) and alias the new version ``newest``. Returns the model URI."""
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


def alias_files(uri: str, files: list[Path], alias: str = LOCK_ALIAS) -> dict[str, str | None]:
    """Point ``alias`` at the registered version whose weights are each file (matched by the
    md5 its run recorded), e.g. the checked-out outputs of ``dvc.lock``. Returns, per file,
    ``"<model> v<version>"`` or None where no registered version holds those weights.
    """
    client = open_store(uri)
    out: dict[str, str | None] = {}
    try:
        for f in files:
            md5 = md5_file(f)
            runs = mlflow.search_runs(
                search_all_experiments=True,
                filter_string=f"tags.`kdflow.output.md5` = '{md5}'",
                output_format="list",
                order_by=["attributes.start_time DESC"],
            )
            versions = [
                v for r in runs for v in client.search_model_versions(f"run_id = '{r.info.run_id}'")
            ]
            if not versions:
                out[str(f)] = None
                continue
            v = max(versions, key=lambda v: int(v.version))
            client.set_registered_model_alias(v.name, alias, v.version)
            out[str(f)] = f"{v.name} v{v.version}"
    except MlflowException as exc:
        raise KdflowError(f"MLflow at {uri}: {str(exc).splitlines()[0]}") from None
    return out


def load_logged_weights(uri: str, store: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A logged model's weights, metadata and what the URI resolved to (``name/version``).

    A URI that does not resolve is the user's to fix: one line, exit 2.
    """
    import mlflow.models
    import mlflow.pytorch

    client = open_store(store)
    try:
        info = mlflow.models.get_model_info(uri)
        resolved = f"run {info.run_id}"
        if uri.startswith("models:/"):
            name, _, ref = uri.removeprefix("models:/").partition("@")
            if ref:
                v = client.get_model_version_by_alias(name, ref)
            else:
                name, _, number = name.partition("/")
                v = client.get_model_version(name, number)
            resolved = f"{v.name}/{v.version} (run {v.run_id})"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = mlflow.pytorch.load_model(uri, map_location="cpu")
    except (MlflowException, OSError) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ParamsError(f"weights {uri} does not resolve in the store {store}: {msg}") from None
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    return state, dict(info.metadata or {}), resolved
