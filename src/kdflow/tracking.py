"""MLflow tracking: the only module of kdflow that imports mlflow.

One run per stage execution, nested under one parent run per pipeline execution; params
logged flat (with the params of the models a stage starts from), metrics per epoch, tags that
tie the run to its git commit, its DVC stage and experiment and the md5 of what it wrote (the
hash dvc.lock records), and the model logged with a signature and registered under aliases.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
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
import yaml
from mlflow.exceptions import MlflowException
from pydantic import BaseModel
from torch import nn

from kdflow.config import TrackingConfig
from kdflow.errors import KdflowError, ParamsError
from kdflow.io import atomic_write_json, md5_file

_T0 = time.time()
ALIAS = "newest"  # the version trained last
LOCK_ALIAS = "lock"  # the version whose weights are the checked-out file (what dvc.lock says)
EXP_COPIES = f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}"  # where DVC runs --queue/--temp


def process_seconds() -> float:
    """Wall time since this process started (Linux), else since kdflow.tracking was imported."""
    try:
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time() - _T0


def _prefetch() -> None:
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


def default_store(uri: str) -> Path | None:
    """The sqlite file of the repository's own store, when ``uri`` is that store."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return db if db.resolve() == (project_root() / "mlflow.db").resolve() else None


# Columns of MLflow's schema that hold artifact paths (all absolute, written at creation).
_PATH_COLUMNS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "model_versions": ("source", "storage_location"),
    "logged_models": ("artifact_location",),
}


def relocate_store(db: Path) -> int:
    """Point a copied or moved repository's store at the artifacts inside the copy.

    MLflow records absolute artifact paths; without this a copy would keep writing into (and
    reading from) the original folder. Returns the number of rows rewritten.
    """
    if not db.is_file():
        return 0
    root = db.resolve().parent
    con = sqlite3.connect(db, timeout=60)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "experiments" not in tables:
            return 0
        olds = set()
        for (loc,) in con.execute("SELECT artifact_location FROM experiments"):
            if loc and loc.startswith("file://") and loc.endswith("/mlartifacts"):
                old = Path(urlparse(loc).path).parent
                if old != root:
                    olds.add(old)
        changed = 0
        with con:  # one transaction: all paths move or none
            for old in olds:
                for before, after in (
                    (old.as_uri() + "/", root.as_uri() + "/"),
                    (f"{old}/", f"{root}/"),
                ):
                    for table, cols in _PATH_COLUMNS.items():
                        for col in cols if table in tables else ():
                            cur = con.execute(
                                f"UPDATE {table} SET {col} = ? || substr({col}, ?) "
                                f"WHERE substr({col}, 1, ?) = ?",
                                (after, len(before) + 1, len(before), before),
                            )
                            changed += cur.rowcount
        return changed
    except sqlite3.Error as exc:
        raise KdflowError(f"MLflow store {db} could not be read ({exc}); is it corrupt?") from None
    finally:
        con.close()


def open_store(uri: str) -> Any:
    """Check a server answers, point a copied repository's store at itself, use the store."""
    check_reachable(uri)
    db = default_store(uri)
    if db is not None:
        relocate_store(db)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


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


def dvc_managed(root: Path, experiment: bool) -> set[str]:
    """Files DVC rewrites itself: dvc.lock, every stage output, and an experiment's params.

    DVC deletes a stage's git-tracked outputs before running it and rewrites dvc.lock after;
    ``dvc exp run -S`` edits the params file and records it in the experiment's commit. None of
    these make the code that runs differ from the commit.
    """
    managed = {"dvc.lock"}
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return managed
    for stage in (lock.get("stages") or {}).values():
        managed |= {str(o.get("path")) for o in stage.get("outs") or [] if isinstance(o, dict)}
        if experiment:
            managed |= set(stage.get("params") or {})
    return managed


def git_state() -> dict[str, str]:
    """Commit, and whether files other than DVC's own outputs differ from it."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"commit": "unknown", "dirty": "unknown", "changed": ""}
    changed = [p for p in _git("diff", "--name-only", "--relative", "HEAD").splitlines() if p]
    managed = dvc_managed(Path.cwd(), bool(os.environ.get("DVC_EXP_NAME")))
    own = [
        p for p in changed if not any(p == m or p.startswith(m.rstrip("/") + "/") for m in managed)
    ]
    return {"commit": commit, "dirty": str(bool(own)).lower(), "changed": " ".join(own)[:4000]}


def in_pipeline() -> bool:
    """Started by ``dvc repro`` / ``dvc exp run`` (or told so): the run gets a parent."""
    return bool(os.environ.get("DVC_STAGE") or os.environ.get("KDFLOW_PIPELINE_ID"))


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
            exp = os.environ.get("DVC_EXP_NAME", "")  # one per experiment, also from one queue
            return hashlib.sha1(f"{pid}-{fields[19]}-{exp}".encode()).hexdigest()[:12]
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
    """A context manager around one MLflow run; a no-op on non-zero DDP ranks.

    ``upstream`` holds the params of the models the stage starts from (logged with their role
    as prefix, e.g. ``source.distill.method``); ``resume_run_id`` continues an interrupted
    run instead of starting a second one; ``pipeline_params`` go on the pipeline's parent run.
    """

    def __init__(
        self,
        cfg: TrackingConfig,
        stage: str,
        params: dict[str, Any],
        input_hashes: dict[str, str] | None = None,
        enabled: bool = True,
        run_name: str | None = None,
        upstream: dict[str, dict[str, Any]] | None = None,
        pipeline_params: Any = None,
        resume_run_id: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.stage = stage
        self.run_name = run_name or stage  # e.g. "distill kd T=1 alpha=0.5": readable in the UI
        self.params = flatten_params(params)
        for role, lineage in (upstream or {}).items():
            self.params.update({f"{role}.{k}": v for k, v in lineage.items()})
        self.input_hashes = input_hashes or {}
        self.enabled = enabled
        self.uri = tracking_uri(cfg)
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self.pipeline_id = pipeline_id()
        self.pipeline_params = pipeline_params
        self.resume_run_id = resume_run_id
        self.resumed = False
        self.logged_steps: set[int] = set()
        self.log_model_seconds = 0.0

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

    def _experiment_id(self) -> str:
        exp = self._call("read the experiment", mlflow.get_experiment_by_name, self.cfg.experiment)
        if exp is None:
            location = None
            db = default_store(self.uri) or (
                Path(self.uri.removeprefix("sqlite:///"))
                if self.uri.startswith("sqlite:")
                else None
            )
            if db is not None:  # artifacts beside the database, inside the repository
                location = (db.resolve().parent / "mlartifacts").as_uri()
            try:
                return mlflow.create_experiment(self.cfg.experiment, location)
            except MlflowException:  # another stage created it meanwhile: use that one
                exp = mlflow.get_experiment_by_name(self.cfg.experiment)
                if exp is None:
                    raise
        return exp.experiment_id

    def _lineage_tags(self) -> dict[str, str]:
        git = git_state()
        tags = {
            "kdflow.pipeline_id": self.pipeline_id,
            "kdflow.git_dirty": git["dirty"],
            "mlflow.source.git.commit": git["commit"],
            "kdflow.git_commit": git["commit"],
            "kdflow.world_size": os.environ.get("WORLD_SIZE", "1"),  # processes of the stage
        }
        if git["changed"]:
            tags["kdflow.git_changed"] = git["changed"]
        if os.environ.get("DVC_EXP_NAME"):  # set by dvc exp run (workspace, --temp, --queue)
            tags["kdflow.dvc_exp"] = os.environ["DVC_EXP_NAME"]
        if os.environ.get("DVC_EXP_BASELINE_REV"):
            tags["kdflow.baseline_commit"] = os.environ["DVC_EXP_BASELINE_REV"]
        return tags

    def _parent(self, exp_id: str, tags: dict[str, str]) -> str:
        """The pipeline execution's parent run, created by its first stage."""
        client = mlflow.MlflowClient()
        query = (
            f"tags.`kdflow.pipeline_id` = '{self.pipeline_id}' and tags.`kdflow.kind` = 'pipeline'"
        )
        found = self._call(
            "find the pipeline run", client.search_runs, [exp_id], query, max_results=1
        )
        if found:
            return found[0].info.run_id
        label = tags.get("kdflow.dvc_exp") or tags["kdflow.git_commit"][:8]
        run = self._call(
            "start the pipeline run",
            client.create_run,
            exp_id,
            run_name=f"pipeline {label}",
            tags={**tags, "kdflow.kind": "pipeline", "kdflow.stage": "pipeline"},
        )
        if self.pipeline_params is not None:
            flat = flatten_params(self.pipeline_params)
            params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in flat.items()]
            for i in range(0, len(params), 100):
                self._call(
                    "log params", client.log_batch, run.info.run_id, params=params[i : i + 100]
                )
        # never left RUNNING: each stage moves its end time on as it finishes
        self._call("end the pipeline run", client.set_terminated, run.info.run_id, "FINISHED")
        return run.info.run_id

    def _resumable(self, run_id: str, exp_id: str) -> bool:
        try:
            run = mlflow.MlflowClient().get_run(run_id)
        except MlflowException:
            return False
        return run.info.experiment_id == exp_id and run.info.status != "FINISHED"

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        if self.cfg.log_models and not os.environ.get("KDFLOW_NO_PREFETCH"):
            threading.Thread(target=_prefetch, name="kdflow-prefetch", daemon=True).start()
        open_store(self.uri)
        exp_id = self._experiment_id()
        self._call("set the experiment", mlflow.set_experiment, experiment_id=exp_id)
        tags = self._lineage_tags()
        if in_pipeline():
            self.parent_id = self._parent(exp_id, tags)
            tags["mlflow.parentRunId"] = self.parent_id
        tags.update({
            "kdflow.stage": self.stage,
            "kdflow.kind": "stage",
            "kdflow.command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
        })  # fmt: skip
        tags.update({f"kdflow.input.{k}": v for k, v in self.input_hashes.items()})
        rid = self.resume_run_id
        if rid and self._resumable(rid, exp_id):
            run = self._call("resume the run", mlflow.start_run, run_id=rid)
            self._call("set tags", mlflow.set_tags, tags)
            self.resumed = True
            history = mlflow.MlflowClient().get_metric_history(rid, "train_loss")
            self.logged_steps = {m.step for m in history}
        else:
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
                if self.parent_id:
                    mlflow.MlflowClient().set_terminated(self.parent_id, "FINISHED")
            except (MlflowException, OSError):
                if et is None:
                    raise

    def abandon(self, run_id: str) -> None:
        """Mark an interrupted run that will not be continued as KILLED (never RUNNING)."""
        if not self.enabled:
            return
        client = mlflow.MlflowClient()
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "KILLED")
        except MlflowException:
            pass

    def record_run(self, path: Path, fingerprint: str) -> None:
        """Keep this run's id beside the resume checkpoints, so a re-run continues it."""
        if self.enabled and self.run_id:
            atomic_write_json(
                path, {"run_id": self.run_id, "uri": self.uri, "fingerprint": fingerprint}
            )

    def set_output(self, path: str | Path) -> None:
        """Tag the run with the md5 of the file it wrote: the hash dvc.lock records for it."""
        self.set_tags({"kdflow.output.md5": md5_file(path), "kdflow.output.path": str(path)})

    def set_lock_alias(self, files: list[Path]) -> dict[str, str | None]:
        """Alias ``lock`` to the versions whose weights are ``files`` (the checked-out ones)."""
        if not (self.enabled and self.cfg.register_models):
            return {}
        return alias_files(self.uri, files, LOCK_ALIAS)

    def link_pipeline(self, files: list[Path]) -> dict[str, str]:
        """Hang the runs that made ``files`` on this pipeline's parent run, also those DVC
        skipped or restored from its cache (found by the md5 of what they wrote). The parent
        gets ``kdflow.stage_run.<stage>`` tags and the stages' final metrics.
        """
        if not (self.enabled and self.parent_id):
            return {}
        client = mlflow.MlflowClient()
        exp_id = mlflow.get_run(self.run_id).info.experiment_id
        links: dict[str, str] = {}
        metrics: dict[str, float] = {}
        for path in files:
            md5 = md5_file(path)
            found = self._call(
                "find a stage run",
                client.search_runs,
                [exp_id],
                f"tags.`kdflow.output.md5` = '{md5}' and attributes.status = 'FINISHED'",
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
            if not found:
                continue
            run = found[0]
            stage = run.data.tags.get("kdflow.stage", path.stem)
            links[stage] = run.info.run_id
            reused = run.data.tags.get("mlflow.parentRunId") != self.parent_id
            key = stage.replace("@", "_")  # MLflow names allow no "@"
            tags = {f"kdflow.stage_run.{key}": run.info.run_id}
            if reused:
                tags[f"kdflow.reused.{key}"] = run.info.run_id
            for k, v in tags.items():
                self._call("link a stage run", client.set_tag, self.parent_id, k, v)
            for k, v in run.data.metrics.items():
                if "." in k:  # final figures (test.accuracy), not per-epoch series
                    metrics[f"{key}.{k}"] = v
        if metrics:
            now = int(time.time() * 1000)
            items = [mlflow.entities.Metric(k, v, now, 0) for k, v in metrics.items()]
            for i in range(0, len(items), 500):
                self._call(
                    "log metrics", client.log_batch, self.parent_id, metrics=items[i : i + 500]
                )
        return links

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
        self,
        model: nn.Module,
        registered_name: str,
        example: torch.Tensor,
        metadata: dict[str, Any] | None = None,
    ) -> str | None:
        """Log the model with signature, input example and ``metadata`` (the input
        normalisation and class names travel with it); register it; alias the version."""
        if not (self.enabled and self.cfg.log_models):
            return None
        t0 = time.perf_counter()
        try:
            return self._log_model(model, registered_name, example, metadata)
        finally:
            self.log_model_seconds += time.perf_counter() - t0

    def _log_model(
        self,
        model: nn.Module,
        registered_name: str,
        example: torch.Tensor,
        metadata: dict[str, Any] | None,
    ) -> str | None:
        from mlflow.models import infer_signature

        model = copy.deepcopy(model).cpu().eval()
        if example.shape[0] < 2:  # a batch of 2 lets torch.export keep the batch axis dynamic
            example = torch.cat([example, example])
        with torch.no_grad():
            out = model(example)
        signature = infer_signature(example.numpy(), out.numpy())
        reg = registered_name if self.cfg.register_models else None
        # "pt2" (torch.export) needs no pickle to load: nothing unsafe, no kdflow import needed.
        registry_log = logging.getLogger("mlflow.tracking._model_registry")
        level = registry_log.level  # "already exists, creating a new version": expected
        registry_log.setLevel(logging.WARNING)
        with warnings.catch_warnings():  # torch's pt2 packer warns about CPU weights: moot here
            warnings.filterwarnings("ignore", "No complete tensor found", UserWarning)
            info = self._call(
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
        registry_log.setLevel(level)
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
    open_store(uri)
    try:
        if experiments:
            return mlflow.search_runs(experiment_names=experiments, filter_string=filter_string)
        return mlflow.search_runs(search_all_experiments=True, filter_string=filter_string)
    except MlflowException as exc:
        raise KdflowError(f"MLflow at {uri}: {str(exc).splitlines()[0]}") from None


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


def load_registered(name: str, uri: str, alias: str = ALIAS) -> nn.Module:
    """Load a registered model back (tests, notebooks)."""
    mlflow.set_tracking_uri(uri)
    return mlflow.pytorch.load_model(f"models:/{name}@{alias}")
