"""Stage ``distill``: the student architecture trained against the teacher(s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdflow.checkpoint import lineage, model_meta
from kdflow.distill import ensemble_logits, load_teachers
from kdflow.distributed import is_main, launch, resolve_device
from kdflow.metrics import agreement_metrics, predict
from kdflow.models import model_spec
from kdflow.params import load_params
from kdflow.pipeline import recipes
from kdflow.pipeline.stage import StagePaths, TrainingStage, test_metrics, train_summary
from kdflow.tasks import load_task
from kdflow.tracking import tracking_uri


def run_title(method: str, options: dict[str, Any], lr: float) -> str:
    """The MLflow run's name: the method and the options it was run with."""
    shown = " ".join(f"{k}={v:g}" for k, v in options.items() if isinstance(v, float))
    return f"distill {method} {shown} lr={lr:g}".replace("  ", " ")


def run_distill(
    params_file: str, data: str, teacher: str, student: str, cache: str, external: Path,
    paths: StagePaths,
) -> None:  # fmt: skip
    params = load_params(params_file)
    launch(params.compute, "distill", params_file)  # several processes: torch.distributed.run
    cfg, scfg, tcfg = params.distill, params.models.student, params.distill.train
    task = load_task(data)
    device = resolve_device(tcfg.device)
    teachers, hashes = load_teachers([teacher, *cfg.extra_teachers], task.num_classes, device)
    logged = {
        "distill": cfg.model_dump(exclude={"methods"}),
        "options": cfg.options(),
        "labels": {"label_fraction": params.train.student.label_fraction},
        "model": scfg,
    }
    inputs = {"data_old": task.content_hash, **{f"teacher{i}": h for i, h in enumerate(hashes)}}
    upstream = {"teacher": lineage(teacher, "teacher")}
    if cfg.init == "student":
        upstream["init"] = lineage(student, "student")
    store = tracking_uri(params.tracking)
    model, objective, init_hash = recipes.distill_setup(
        params, task, teachers, hashes, student, external, store, cache
    )
    inputs.update({"init": init_hash} if init_hash else {})
    title = run_title(cfg.method, cfg.options(), tcfg.lr)
    datasets = [(task, ("train", "val", "test"))]
    stage = TrainingStage("distill", params, paths, logged, inputs, title, upstream, datasets)
    use_cache = objective.cached is not None
    teacher_says = {split: ensemble_logits(teachers, task[split][0]) for split in ("val", "test")}

    def agreement(m: nn.Module, split: str) -> dict[str, float]:
        return agreement_metrics(predict(m, task[split][0]), teacher_says[split])

    with stage:
        stage.tracker.set_tags(
            {"kdflow.distill.method": cfg.method, "kdflow.teacher_cache": use_cache}
        )
        result = recipes.distill_train(
            params, task, model, objective, stage.fit,
            extra_metrics=lambda m, e: {f"val_{k}": v for k, v in agreement(m, "val").items()},
        )  # fmt: skip
        metrics = {**train_summary(result, model), "method": cfg.method, "teacher_cache": use_cache}
        metrics["test"] = {**test_metrics(model, task["test"]), **agreement(model, "test")}
        meta = model_meta(model_spec(scfg), task, role="distilled", method=cfg.method)
        stage.save(model, meta, metrics, "kdflow-distilled", task["test"][0][:1])
    if is_main():
        t = metrics["test"]
        print(
            f"[distill] {cfg.method}: test accuracy {t['accuracy']:.4f}, agreement "
            f"{t['agreement']:.4f}, KL {t['kl_to_teacher']:.4f} ({stage.seconds:.1f}s)"
        )
