"""MLflow tracking: the only module of kdflow that imports mlflow.

One run per stage execution, params logged flat, metrics per epoch, tags that tie the run
to its git commit, its DVC stage and the pipeline execution, and the model logged with a
signature and registered under an alias.
"""

from __future__ import annotations

import copy
import hashlib
import os
import socket
import subprocess
import sys
import uuid
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import mlflow
import torch
from mlflow.exceptions import MlflowException
from pydantic import BaseModel
from torch import nn

from kdflow.config import TrackingConfig
from kdflow.errors import KdflowError

ALIAS = "newest"
EXP_COPIES = f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}"  # where DVC runs --queue/--temp


def project_root() -> Path:
    """The repository the default store belongs to, also from DVC's experiment copies.

    ``dvc exp run --queue`` / ``--temp`` run the stages in a copy under
    ``<repo>/.dvc/tmp/exps/`` (``DVC_ROOT`` points there) and delete it afterwards: a store
    inside the copy would vanish with it, so runs go to the repository's own store.
    """
    root = str(Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve())
    return Path(root.split(EXP_COPIES)[0]) if EXP_COPIES in root + os.sep else Path(root)


def tracking_uri(cfg: TrackingConfig) -> str:
    """params, then ``MLFLOW_TRACKING_URI``, then ``mlflow.db`` at the repository root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return cfg.uri or env or f"sqlite:///{project_root() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (one line) when an http(s) tracking server does not answer."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout):
            pass
    except OSError as exc:
        raise KdflowError(
            f"MLflow tracking server {uri} is not reachable ({exc.strerror or exc}); start it "
            "(make ui / mlflow server) or point tracking.uri / MLFLOW_TRACKING_URI elsewhere"
        ) from None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def git_state() -> dict[str, str]:
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit or "unknown",
        "dirty": str(bool(dirty)).lower() if commit else "unknown",
    }


def pipeline_id() -> str:
    """An id shared by the stages of one ``dvc repro`` / ``dvc exp run``.

    ``KDFLOW_PIPELINE_ID`` wins; otherwise the id of the ``dvc`` process that started this
    stage (its pid and start time); outside DVC, a fresh id.
    """
    if os.environ.get("KDFLOW_PIPELINE_ID"):
        return os.environ["KDFLOW_PIPELINE_ID"]
    pid = os.getppid()
    for _ in range(8):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        fields = stat.rsplit(")", 1)[1].split()
        if any(Path(a.decode(errors="ignore")).name in ("dvc", "dvc.exe") for a in cmdline[:2]) or (
            len(cmdline) > 2 and cmdline[1:3] == [b"-m", b"dvc"]
        ):
            return hashlib.sha1(f"{pid}-{fields[19]}".encode()).hexdigest()[:12]
        pid = int(fields[1])
        if pid <= 1:
            break
    return uuid.uuid4().hex[:12]


def flatten_params(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys, for MLflow."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump()
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_params(v, f"{prefix}{k}."))
        if not obj and prefix:
            out[prefix[:-1]] = "{}"
    else:
        out[prefix[:-1]] = obj
    return out


class Tracker:
    """A context manager around one MLflow run; a no-op on non-zero DDP ranks."""

    def __init__(
        self,
        cfg: TrackingConfig,
        stage: str,
        params: dict[str, Any],
        input_hashes: dict[str, str] | None = None,
        enabled: bool = True,
        run_name: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.stage = stage
        self.run_name = run_name or stage  # e.g. "distill kd T=1 alpha=0.5": readable in the UI
        self.params = flatten_params(params)
        self.input_hashes = input_hashes or {}
        self.enabled = enabled
        self.uri = tracking_uri(cfg)
        self.run_id: str | None = None
        self.pipeline_id = pipeline_id()

    # The check runs before any work, so a dead server costs nothing and writes nothing.
    def preflight(self) -> Tracker:
        if self.enabled:
            check_reachable(self.uri)
        return self

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            msg = str(exc).splitlines()[0][:300]
            raise KdflowError(f"MLflow at {self.uri} failed to {what}: {msg}") from None
        except OSError as exc:
            raise KdflowError(f"MLflow at {self.uri} failed to {what}: {exc}") from None

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        self.preflight()
        mlflow.set_tracking_uri(self.uri)
        exp = self._call("read the experiment", mlflow.get_experiment_by_name, self.cfg.experiment)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:"):  # artifacts beside the database
                db = Path(self.uri.removeprefix("sqlite:///"))
                location = (db.resolve().parent / "mlartifacts").as_uri()
            try:
                mlflow.create_experiment(self.cfg.experiment, location)
            except MlflowException:  # another stage created it meanwhile: use that one
                if mlflow.get_experiment_by_name(self.cfg.experiment) is None:
                    raise
        self._call("set the experiment", mlflow.set_experiment, self.cfg.experiment)
        git = git_state()
        tags = {
            "kdflow.stage": self.stage,
            "kdflow.pipeline_id": self.pipeline_id,
            "kdflow.git_dirty": git["dirty"],
            "mlflow.source.git.commit": git["commit"],
            "kdflow.git_commit": git["commit"],
            "kdflow.command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
        }
        if os.environ.get("DVC_EXP_NAME"):
            tags["kdflow.dvc_exp"] = os.environ["DVC_EXP_NAME"]
        tags.update({f"kdflow.input.{k}": v for k, v in self.input_hashes.items()})
        run = self._call("start a run", mlflow.start_run, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        params = {k: str(v)[:6000] for k, v in self.params.items()}
        try:
            self._call("log params", mlflow.log_params, params)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.enabled and self.run_id is not None:
            try:
                status = "FINISHED" if et is None else "FAILED"
                if et is not None and issubclass(et, KeyboardInterrupt):
                    status = "KILLED"
                mlflow.end_run(status)
            except (MlflowException, OSError):
                if et is None:
                    raise

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.enabled:
            clean = {k.replace("@", "_"): float(v) for k, v in metrics.items() if v is not None}
            self._call("log metrics", mlflow.log_metrics, clean, step=step)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        """A stage's nested metrics document, logged once with dotted names."""
        self.log_metrics(flat_metrics(metrics))

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled:
            self._call("set tags", mlflow.set_tags, {k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            fn = mlflow.log_artifacts if Path(path).is_dir() else mlflow.log_artifact
            self._call("log an artifact", fn, str(path), artifact_path)

    def log_model(
        self, model: nn.Module, registered_name: str, example: torch.Tensor
    ) -> str | None:
        """Log the model with signature and input example; register it; alias the version."""
        if not (self.enabled and self.cfg.log_models):
            return None
        from mlflow.models import infer_signature

        model = copy.deepcopy(model).cpu().eval()
        if example.shape[0] < 2:  # a batch of 2 lets torch.export keep the batch axis dynamic
            example = torch.cat([example, example])
        with torch.no_grad():
            out = model(example)
        signature = infer_signature(example.numpy(), out.numpy())
        reg = registered_name if self.cfg.register_models else None
        # "pt2" (torch.export) needs no pickle to load: nothing unsafe, no kdflow import needed.
        with warnings.catch_warnings():  # torch's pt2 packer warns about CPU weights: moot here
            warnings.filterwarnings("ignore", "No complete tensor found", UserWarning)
            info = self._call(
                "log the model",
                mlflow.pytorch.log_model,
                model,
                name=registered_name.removeprefix("kdflow-"),  # the model's role, not "model"
                signature=signature,
                input_example=example.numpy(),
                registered_model_name=reg,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                serialization_format="pt2",
            )
        if reg and info.registered_model_version is not None:
            client = mlflow.MlflowClient()
            self._call(
                "set the model alias",
                client.set_registered_model_alias,
                reg,
                ALIAS,
                str(info.registered_model_version),
            )
        return info.model_uri


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numbers as ``a.b.c`` keys; strings, flags and None are left out."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flat_metrics(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def search_runs(uri: str, experiments: list[str] | None = None, filter_string: str = "") -> Any:
    """Runs as a pandas DataFrame (for ``kdflow compare``)."""
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    try:
        if experiments:
            return mlflow.search_runs(experiment_names=experiments, filter_string=filter_string)
        return mlflow.search_runs(search_all_experiments=True, filter_string=filter_string)
    except MlflowException as exc:
        raise KdflowError(f"MLflow at {uri}: {str(exc).splitlines()[0]}") from None


def load_registered(name: str, uri: str, alias: str = ALIAS) -> nn.Module:
    """Load a registered model back (tests, notebooks)."""
    mlflow.set_tracking_uri(uri)
    return mlflow.pytorch.load_model(f"models:/{name}@{alias}")
