"""Stages ``transfer@<source>-<strategy>`` (a source model carried to the new task, and what it
kept of the old one) and ``transfer-scratch`` (the baseline: the student's architecture from
random weights, so it depends on no trained model and no source change re-runs it)."""

from __future__ import annotations

from typing import Any

from torch import nn

from kdflow.checkpoint import load_model, model_meta
from kdflow.config import Params
from kdflow.distributed import is_main, launch
from kdflow.errors import KdflowError, ParamsError
from kdflow.io import sha256_file
from kdflow.metrics import classification_metrics, predict
from kdflow.models import build_for_task, model_spec
from kdflow.params import load_params
from kdflow.pipeline import recipes
from kdflow.pipeline.stage import StagePaths, TrainingStage
from kdflow.tasks import Task, load_task
from kdflow.transfer import transfer_summary


def stage_name(strategy: str, source_name: str | None) -> str:
    """The DVC stage name, also the MLflow ``kdflow.stage`` tag and the registered model name."""
    return f"transfer-{strategy}" if source_name is None else f"transfer@{source_name}-{strategy}"


def check_stage(
    params: Params, name: str, source_name: str | None, source_file: str | None
) -> bool:
    """Is ``name`` trained from scratch? One line when the arguments do not fit the strategy."""
    cfg, scratch = params.transfer, recipes.from_scratch(name)  # an unknown name: one line
    if scratch:
        if source_name or source_file:
            raise KdflowError(
                f"transfer strategy {name!r} trains from random weights: it takes no --source "
                f"or --source-name (it is stage transfer-{name})"
            )
        return True
    if name not in cfg.strategies:
        raise ParamsError(
            f"params.yaml: transfer.strategies = {cfg.strategies} does not list {name!r}; add it"
        )
    if not (source_name and source_file):
        raise KdflowError(f"transfer strategy {name!r} needs --source-name and --source")
    if source_name not in cfg.source:
        raise ParamsError(
            f"params.yaml: transfer.source = {cfg.source} does not list {source_name!r}; add it"
        )
    return False


def scratch_source(params: Params, old: Task, new: Task) -> tuple[nn.Module, dict[str, Any]]:
    """The student's architecture from params (not from a checkpoint, so the stage needs no
    trained model); ``recipes.transfer_setup`` initialises it afresh with the transfer seed."""
    spec = model_spec(params.models.student)
    return build_for_task(spec, new, num_classes=old.num_classes), {"spec": spec}


def run_transfer(
    name: str,
    params_file: str,
    old_dir: str,
    new_dir: str,
    source_file: str | None,
    paths: StagePaths,
    source_name: str | None = None,
) -> None:
    """One transfer stage: ``source_name``/``source_file`` for a strategy that starts from a
    model, neither for the scratch baseline."""
    params = load_params(params_file)
    stage_id = stage_name(name, source_name)
    launch(params.compute, stage_id, params_file)  # several processes: torch.distributed.run
    scratch = check_stage(params, name, source_name, source_file)
    cfg, opts = params.transfer, params.transfer.options_for(name)
    old, new = load_task(old_dir), load_task(new_dir)
    if new.num_classes == 0:
        raise ParamsError("params.yaml: data.new_classes = [] leaves no new task to transfer to")
    inputs = {"data_new": new.content_hash, "data_old": old.content_hash}
    if scratch:
        source, ckpt = scratch_source(params, old, new)
    else:
        assert source_file is not None  # check_stage
        what = f"transfer source ({source_name})"
        source, ckpt = load_model(source_file, what, None, old.num_classes)
        inputs["source"] = sha256_file(source_file)
    named = {} if scratch else {"source": source_name}
    logged = {"transfer": {"strategy": name, **named, **opts}, "train": cfg.train}
    title = stage_id + (f" lr={opts['lr']:g}" if opts.get("lr") else "")
    upstream = {} if scratch else {"source": ckpt.get("lineage") or {}}
    datasets = [(new, ("train", "test")), (old, ("test",))]
    stage = TrainingStage(stage_id, params, paths, logged, inputs, title, upstream, datasets)
    x_old, y_old = old["test"]
    before = None if scratch else classification_metrics(predict(source, x_old), y_old)["accuracy"]
    model, phases = recipes.transfer_setup(params, name, source, ckpt["spec"], old, new)
    with stage:
        with stage.working():  # a solved linear probe is work too
            chosen = recipes.transfer_train(
                opts, cfg.train, model, phases, new["train"], stage.fit, name
            )
        summary = transfer_summary(model, new["test"], old["test"], before)
        metrics = {"strategy": name, "source": source_name, "from_scratch": scratch, **summary}
        metrics["solved"] = chosen
        spec = {**ckpt["spec"], "kind": "transfer", "new_classes": new.num_classes}
        meta = model_meta(
            spec, old, strategy=name, source=source_name, from_scratch=scratch,
            new_classes_names=new.class_names, new_data_hash=new.content_hash,
        )  # fmt: skip
        registered = "kdflow-" + stage_id.replace("@", "-")
        stage.save(model, meta, metrics, registered, new["test"][0][:1])
    if is_main():
        o = metrics["old_task"]["accuracy"]
        print(
            f"[transfer] {stage_id}: new-task accuracy {metrics['new_task']['accuracy']:.4f}, "
            f"old-task accuracy {'n/a' if o is None else f'{o:.4f}'} ({stage.seconds:.1f}s)"
        )
