"""Stage ``train@teacher`` / ``train@student``: a model trained alone on the old task.

From random init, or from the weights ``models.<role>.weights`` names (a kdflow checkpoint, an
MLflow model, a state dict such as torchvision ImageNet weights): fine-tuned, or, for a finished
model with ``fine_tune: false``, verified and adopted as is.
"""

from __future__ import annotations

from pathlib import Path

from kdflow.checkpoint import model_meta
from kdflow.distributed import is_main, launch
from kdflow.models import model_spec
from kdflow.params import load_params
from kdflow.pipeline import recipes
from kdflow.pipeline.stage import (
    StagePaths,
    TrainingStage,
    adopted_summary,
    test_metrics,
    train_summary,
)
from kdflow.tasks import load_task
from kdflow.tracking import tracking_uri


def run_train(role: str, params_file: str, data: str, external: Path, paths: StagePaths) -> None:
    params = load_params(params_file)
    launch(params.compute, f"train@{role}", params_file)  # several processes: torch.distributed.run
    mcfg, tcfg = getattr(params.models, role), getattr(params.train, role)
    task = load_task(data)
    store = tracking_uri(params.tracking)
    model, origin = recipes.initial_model(params, role, task, external, store)
    adopt = recipes.adopts(params, role, origin)
    logged = {"model": mcfg, "train": tcfg, "data": params.data}
    inputs = {"data_old": task.content_hash, **({"weights": origin.digest} if origin else {})}
    title = f"train@{role} {mcfg.arch} w{mcfg.width}"
    title += (
        f" adopted {origin.weights}" if adopt else f" lr={tcfg.lr:g} labels={tcfg.label_fraction:g}"
    )
    title += f" from {origin.weights}" if origin and not adopt else ""
    datasets = [(task, ("train", "val", "test"))]
    stage = TrainingStage(
        f"train@{role}", params, paths, logged, inputs, run_name=title, datasets=datasets
    )
    with stage:
        if origin:
            stage.tracker.set_tags({f"kdflow.origin.{k}": v for k, v in origin.as_dict().items()})
        if adopt:  # a finished model: verified on load, measured here, not trained
            metrics = adopted_summary(model, task["val"])
        else:
            result = recipes.train_role(params, role, task, model, stage.fit)
            metrics = train_summary(result, model)
        metrics["test"] = test_metrics(model, task["test"])
        meta = model_meta(
            model_spec(mcfg), task, role=role, origin=origin.as_dict() if origin else None
        )
        stage.save(model, meta, metrics, f"kdflow-{role}", task["test"][0][:1])
    if is_main():
        print(
            f"[{role}] test accuracy {metrics['test']['accuracy']:.4f}, "
            f"{metrics['params']} params, {stage.seconds:.1f}s"
        )
