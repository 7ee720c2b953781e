"""The MLflow run of one stage execution: started (or resumed), filled, ended exactly once.

Params are logged flat (with the params of the models a stage starts from), metrics per
epoch, the datasets it reads as run inputs; tags tie the run to its commit, DVC stage and
experiment, its process (so a dead one is recognised) and the md5 of what it wrote. Inside a
pipeline the run hangs under the pipeline execution's parent run, whose status it updates.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.exceptions import MlflowException

from kdflow.errors import KdflowError
from kdflow.io import atomic_write_json, md5_file
from kdflow.tracking import models, pipeline, sweep
from kdflow.tracking.experiment import experiment_id
from kdflow.tracking.flatten import flat_metrics, flatten_params
from kdflow.tracking.provenance import in_pipeline, lineage_tags, pipeline_id, process_tags
from kdflow.tracking.store import call, check_reachable, open_store, store_uri

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kdflow.config import TrackingConfig

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # split -> MLflow context


_STOP = {"busy": 0, "pending": 0}  # a SIGTERM waits for the MLflow call it lands in


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM ends the stage as Ctrl-C does: the run (and its pipeline) end KILLED. Inside an
    MLflow call it waits for the call to return (broken off, sqlite prints a traceback); a
    second SIGTERM does not wait."""
    if _STOP["busy"] and not _STOP["pending"]:
        _STOP["pending"] = signum
        return
    raise KeyboardInterrupt(f"signal {signum}")


class Tracker:
    """A context manager around one MLflow run; a no-op on non-zero DDP ranks.

    ``upstream`` holds the params of the models the stage starts from (logged with their role
    as prefix, e.g. ``source.distill.method``); ``resume_run_id`` continues an interrupted
    run instead of starting a second one; ``pipeline_params`` go on the pipeline's parent run;
    ``checkpoints`` and ``output`` (the resume folder, the model file) are recorded so a later
    stage can close this run should its process die; ``completes_pipeline`` (evaluate): the
    parent run ends FINISHED with this stage.
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
        checkpoints: Path | None = None,
        output: Path | None = None,
        completes_pipeline: bool = False,
    ) -> None:
        self.cfg = cfg
        self.stage = stage
        self.run_name = run_name or stage  # e.g. "distill kd T=1 alpha=0.5": readable in the UI
        self.params = flatten_params(params)
        for role, lineage in (upstream or {}).items():
            self.params.update({f"{role}.{k}": v for k, v in lineage.items()})
        self.input_hashes = input_hashes or {}
        self.enabled = enabled
        self.uri = store_uri(cfg.uri)
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self.pipeline_id = pipeline_id()
        self.pipeline_params = pipeline_params
        self.resume_run_id = resume_run_id
        self.checkpoints, self.output = checkpoints, output
        self.completes_pipeline = completes_pipeline
        self.resumed = False
        self.logged_steps: set[int] = set()
        self.log_model_seconds = 0.0
        self._sigterm: Any = None

    def preflight(self) -> Tracker:
        """Check the store answers before any work, so a dead server costs and writes nothing."""
        if self.enabled:
            check_reachable(self.uri)
        return self

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        _STOP["busy"] += 1
        try:
            return call(self.uri, what, fn, *args, **kwargs)
        finally:
            _STOP["busy"] -= 1
            if not _STOP["busy"] and _STOP["pending"]:
                signum, _STOP["pending"] = _STOP["pending"], 0
                raise KeyboardInterrupt(f"signal {signum}")

    def _resumable(self, run_id: str, exp_id: str) -> bool:
        try:
            run = mlflow.MlflowClient().get_run(run_id)
        except MlflowException:
            return False
        return run.info.experiment_id == exp_id and run.info.status != "FINISHED"

    def _tags(self, exp_id: str) -> dict[str, str]:
        tags = lineage_tags(self.pipeline_id)
        if in_pipeline():
            self.parent_id = pipeline.parent_run(
                self.uri, exp_id, self.pipeline_id, tags, self.pipeline_params
            )
            tags["mlflow.parentRunId"] = self.parent_id
        tags.update({
            "kdflow.stage": self.stage,
            "kdflow.kind": "stage",
            "kdflow.command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
            sweep.WORKDIR: os.getcwd(),
            **process_tags(),
        })  # fmt: skip
        if self.checkpoints is not None:
            tags[sweep.CHECKPOINTS] = str(Path(self.checkpoints).resolve())
        if self.output is not None:
            tags[sweep.OUTPUT] = str(self.output)
        tags.update({f"kdflow.input.{k}": v for k, v in self.input_hashes.items()})
        return tags

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        if self.cfg.log_models and not os.environ.get("KDFLOW_NO_PREFETCH"):
            threading.Thread(target=models.prefetch, name="kdflow-prefetch", daemon=True).start()
        open_store(self.uri)
        exp_id = experiment_id(self.uri, self.cfg.experiment)
        self._call("set the experiment", mlflow.set_experiment, experiment_id=exp_id)
        tags = self._tags(exp_id)
        system = self.cfg.system_metrics
        rid = self.resume_run_id
        if rid and self._resumable(rid, exp_id):
            run = self._call(
                "resume the run", mlflow.start_run, run_id=rid, log_system_metrics=system
            )
            self._call("set tags", mlflow.set_tags, tags)
            client = mlflow.MlflowClient()
            if sweep.CLOSED_BY in run.data.tags:  # closed while dead; alive again
                self._call("clear a tag", client.delete_tag, rid, sweep.CLOSED_BY)
            self.resumed = True
            self.logged_steps = {m.step for m in client.get_metric_history(rid, "train_loss")}
        else:
            run = self._call("start a run", mlflow.start_run, run_name=self.run_name, tags=tags,
                             log_system_metrics=system)  # fmt: skip
        self.run_id = run.info.run_id
        if threading.current_thread() is threading.main_thread():
            self._sigterm = signal.signal(signal.SIGTERM, _terminate)
        params = {k: str(v)[:6000] for k, v in self.params.items()}
        try:
            self._call("log params", mlflow.log_params, params)
            sweep.sweep_stage_runs(self.uri, exp_id, self.stage, self.run_id, {self.run_id})
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None
        if self.enabled and self.run_id is not None:
            status = "FINISHED" if et is None else "FAILED"
            if et is not None and issubclass(et, KeyboardInterrupt):
                status = "KILLED"
            try:
                mlflow.end_run(status)
                if self.parent_id:
                    pipeline.end_parent(self.uri, self.parent_id, status, self.completes_pipeline)
            except (MlflowException, OSError, KdflowError):
                if et is None:
                    raise

    def abandon(self, run_id: str) -> None:
        """Mark an interrupted run that will not be continued as KILLED (never RUNNING), replaced
        by this run."""
        if not self.enabled:
            return
        client = mlflow.MlflowClient()
        try:
            status = client.get_run(run_id).info.status
            if status == "RUNNING":
                client.set_terminated(run_id, "KILLED")
            if status != "FINISHED":
                client.set_tag(run_id, sweep.REPLACED_BY, f"run {self.run_id}")
        except MlflowException:
            pass

    def log_datasets(self, task: Any, splits: Sequence[str]) -> None:
        """The ``splits`` of a prepared task as run inputs (the runs table's Dataset column):
        named ``<dataset>-<task folder>-<split>``, digest the task's content hash and the split,
        source the prepared folder, context training / validation / test."""
        if not self.enabled:
            return
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        folder = Path(task.path).resolve()
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local folder
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(folder))
        base = f"{task.manifest.get('dataset', 'data')}-{folder.name}"
        sets = [MetaDataset(source, f"{base}-{s}", f"{task.content_hash[:16]}-{s}") for s in splits]
        contexts = [CONTEXTS.get(s, s) for s in splits]
        self._call("log datasets", mlflow.log_inputs, datasets=sets, contexts=contexts,
                   tags_list=[None] * len(sets))  # fmt: skip

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
        return models.alias_files(self.uri, files, models.LOCK_ALIAS)

    def link_pipeline(self, files: list[Path]) -> dict[str, str]:
        """Hang the runs that made ``files`` on this pipeline's parent run, also those DVC
        skipped or restored from its cache (found by the md5 of what they wrote)."""
        if not (self.enabled and self.parent_id and self.run_id):
            return {}
        exp_id = mlflow.get_run(self.run_id).info.experiment_id
        return pipeline.link_outputs(self.uri, exp_id, self.parent_id, files)

    def promote(self, weights: Path, pred: Any, test: tuple[Any, Any], data_hash: str) -> Any:
        """Move the ``champion`` alias to the version that wrote ``weights`` if it earns it
        (``champion.promote``); the decision goes on the pipeline's run. None: nothing logged."""
        if not (self.enabled and self.run_id and self.cfg.log_models and self.cfg.register_models):
            return None
        from kdflow.tracking import champion

        log_to = self.parent_id or self.run_id
        return champion.promote(self.uri, weights, pred, test, data_hash, log_to)

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
        checkpoint: Path | None = None,
    ) -> str | None:
        """Log the model with signature, input example and ``metadata`` (the input
        normalisation and class names travel with it) and its kdflow ``checkpoint`` (what
        kdflow loads back, without unpickling); register it; alias the version."""
        if not (self.enabled and self.cfg.log_models):
            return None
        t0 = time.perf_counter()
        try:
            return models.log_model(
                self.uri, model, registered_name, example, metadata, self.cfg.register_models,
                checkpoint,
            )  # fmt: skip
        finally:
            self.log_model_seconds += time.perf_counter() - t0
