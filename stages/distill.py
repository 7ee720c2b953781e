"""DVC stage `distill`: train the student architecture against the teacher(s)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdflow.checkpoint import lineage, model_meta
from kdflow.config import load_params
from kdflow.distill import build_objective, ensemble_logits, initial_student, load_teachers
from kdflow.distributed import is_main, launch, resolve_device
from kdflow.errors import run_main
from kdflow.metrics import agreement_metrics, classification_metrics, predict
from kdflow.models import model_spec
from kdflow.stage import StagePaths, TrainingStage, fingerprint, train_summary
from kdflow.tasks import labelled_train, load_task
from kdflow.tracking import tracking_uri


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="prepared old task")
    ap.add_argument("--teacher", required=True, help="teacher checkpoint")
    ap.add_argument("--student", required=True, help="student checkpoint (distill.init: student)")
    ap.add_argument("--cache", required=True, help="folder of cached teacher logits")
    ap.add_argument(
        "--external", required=True, type=Path, help="folder DVC tracks for models.student.weights"
    )
    StagePaths.add_arguments(ap)
    args = ap.parse_args()
    params = load_params(args.params)
    launch(params.compute)  # several processes: re-run under torch.distributed.run
    cfg, scfg, tcfg = params.distill, params.models.student, params.distill.train
    task = load_task(args.data)
    device = resolve_device(tcfg.device)
    teachers, hashes = load_teachers([args.teacher, *cfg.extra_teachers], task.num_classes, device)
    logged = {
        "distill": cfg.model_dump(exclude={"methods"}),
        "options": cfg.options(),
        "model": scfg,
    }
    inputs = {"data_old": task.content_hash, **{f"teacher{i}": h for i, h in enumerate(hashes)}}
    title = f"distill {cfg.method} T={cfg.temperature:g} alpha={cfg.alpha:g} lr={tcfg.lr:g}"
    paths = StagePaths.from_args(args)
    upstream = {"teacher": lineage(args.teacher, "teacher")}
    if cfg.init == "student":
        upstream["init"] = lineage(args.student, "student")
    stage = TrainingStage(
        "distill", params, paths, logged, inputs, tcfg.seed, run_name=title, upstream=upstream
    )
    store = tracking_uri(params.tracking)
    model, init_hash = initial_student(cfg.init, scfg, task, args.student, args.external, store)
    objective = build_objective(
        cfg, model, teachers, hashes, task["train"][0], task.content_hash, args.cache
    )
    use_cache = objective.cached is not None
    teacher_says = {split: ensemble_logits(teachers, task[split][0]) for split in ("val", "test")}

    def agreement(m, split: str) -> dict[str, float]:
        return agreement_metrics(predict(m, task[split][0]), teacher_says[split])

    with stage:
        stage.tracker.set_tags(
            {"kdflow.distill.method": cfg.method, "kdflow.teacher_cache": use_cache}
        )
        fp = fingerprint(cfg.model_dump(), scfg.model_dump(), hashes, task.content_hash, init_hash)
        train = labelled_train(task, tcfg.label_fraction, params.data.seed, hide=True)
        result = stage.fit(
            tcfg,
            model,
            train,
            task["val"],
            objective=objective,
            fingerprint=fp,
            extra_metrics=lambda m, e: {f"val_{k}": v for k, v in agreement(m, "val").items()},
        )
        metrics = {**train_summary(result, model), "method": cfg.method, "teacher_cache": use_cache}
        x_test, y_test = task["test"]
        metrics["test"] = {
            **classification_metrics(predict(model, x_test), y_test),
            **agreement(model, "test"),
        }
        meta = model_meta(model_spec(scfg), task, role="distilled", method=cfg.method)
        stage.save(model, meta, metrics, "kdflow-distilled", x_test[:1])
    if is_main():
        t = metrics["test"]
        print(
            f"[distill] {cfg.method}: test accuracy {t['accuracy']:.4f}, agreement "
            f"{t['agreement']:.4f}, KL {t['kl_to_teacher']:.4f} ({stage.seconds:.1f}s)"
        )


if __name__ == "__main__":
    run_main(main, exit_now=True)
