"""DVC stage `distill`: train the student architecture against the teacher(s)."""

from __future__ import annotations

import argparse

from kdflow.checkpoint import load_model, model_meta
from kdflow.config import flatten, load_params
from kdflow.distill import (
    DistillObjective,
    cache_key,
    cached_teacher_logits,
    ensemble_logits,
    freeze,
    probe_dims,
)
from kdflow.engine import (
    Trainer,
    agreement_metrics,
    classification_metrics,
    is_main,
    predict,
    resolve_device,
    seed_everything,
)
from kdflow.errors import run_main
from kdflow.io import sha256_file
from kdflow.losses import LOSSES
from kdflow.models import build_model, model_spec
from kdflow.runner import fingerprint, prepare_outputs, train_summary, write_stage_outputs
from kdflow.tasks import load_task
from kdflow.tracking import Tracker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/prepared/old")
    ap.add_argument("--teacher", default="models/teacher.pt")
    ap.add_argument("--out", default="models/distilled.pt")
    args = ap.parse_args()
    params = load_params(args.params)
    cfg, scfg, tcfg = params.distill, params.models.student, params.distill.train
    task = load_task(args.data)
    teacher_paths = [args.teacher, *cfg.extra_teachers]
    device = resolve_device(tcfg.device)
    teachers = [
        freeze(load_model(p, "teacher", expect_classes=task.num_classes)[0].to(device))
        for p in teacher_paths
    ]
    hashes = [sha256_file(p) for p in teacher_paths]
    prepare_outputs(args.out, "metrics/distill.json", "plots/distill.csv")
    tracker = Tracker(
        params.tracking,
        "distill",
        flatten(
            {
                "distill": cfg.model_dump(exclude={"methods"}),
                "options": cfg.options(),
                "model": scfg,
            }
        ),
        {"data_old": task.content_hash, **{f"teacher{i}": h for i, h in enumerate(hashes)}},
        enabled=is_main(),
    ).preflight()
    seed_everything(tcfg.seed)
    init_hash = sha256_file("models/student.pt") if cfg.init == "student" else None
    if cfg.init == "student":
        model, _ = load_model("models/student.pt", "student", model_spec(scfg), task.num_classes)
    else:
        model = build_model(
            scfg.arch, task.num_classes, task.in_channels, task.image_size, scfg.width, scfg.depth
        )
    probe = task["train"][0][:2]
    loss = LOSSES.get(cfg.method)(cfg, probe_dims(model, probe), probe_dims(teachers[0], probe))
    use_cache = cfg.cache_teacher and not tcfg.augment and not loss.needs_features
    cached = None
    if use_cache:
        key = cache_key(hashes, task.content_hash)
        cached = cached_teacher_logits(teachers, task["train"][0], key, "cache")
    objective = DistillObjective(loss, teachers, cached)
    x_test, y_test = task["test"]
    teacher_test = ensemble_logits(teachers, x_test)

    def extra(m, epoch: int) -> dict[str, float]:
        logits = predict(m, x_test)
        return {
            "test_accuracy": classification_metrics(logits, y_test)["accuracy"],
            **agreement_metrics(logits, teacher_test),
        }

    with tracker:
        tracker.set_tags({"kdflow.distill.method": cfg.method, "kdflow.teacher_cache": use_cache})
        trainer = Trainer(
            tcfg,
            model,
            task["train"],
            task["val"],
            objective=objective,
            ckpt_dir="checkpoints/distill",
            fingerprint=fingerprint(
                cfg.model_dump(), scfg.model_dump(), hashes, task.content_hash, init_hash
            ),
            name="distill",
            extra_metrics=extra,
            on_epoch=tracker.log_metrics,
        )
        result = trainer.fit()
        model = trainer.model
        logits = predict(model, x_test)
        metrics = train_summary(result, model)
        metrics["method"] = cfg.method
        metrics["teacher_cache"] = use_cache
        metrics["test"] = {
            **classification_metrics(logits, y_test),
            **agreement_metrics(logits, teacher_test),
        }
        write_stage_outputs(
            model=model,
            meta=model_meta(model_spec(scfg), task, role="distilled", method=cfg.method),
            model_path=args.out,
            metrics=metrics,
            metrics_path="metrics/distill.json",
            history=result.history,
            plots_path="plots/distill.csv",
            tracker=tracker,
            registered_name="kdflow-distilled",
            example=x_test[:1],
        )
        trainer.finish()
    if is_main():
        t = metrics["test"]
        print(
            f"[distill] {cfg.method}: test accuracy {t['accuracy']:.4f}, agreement "
            f"{t['agreement']:.4f}, KL {t['kl_to_teacher']:.4f} ({metrics['train_seconds']:.1f}s)"
        )


if __name__ == "__main__":
    run_main(main)
