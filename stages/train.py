"""DVC stage `train@teacher` / `train@student`: train a model from scratch on the old task."""

from __future__ import annotations

import argparse

from kdflow.checkpoint import model_meta
from kdflow.config import flatten, load_params
from kdflow.engine import Trainer, classification_metrics, is_main, predict, seed_everything
from kdflow.errors import run_main
from kdflow.models import build_model, model_spec
from kdflow.runner import fingerprint, prepare_outputs, train_summary, write_stage_outputs
from kdflow.tasks import load_task
from kdflow.tracking import Tracker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("role", choices=["teacher", "student"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/prepared/old")
    args = ap.parse_args()
    role = args.role
    params = load_params(args.params)
    mcfg, tcfg = getattr(params.models, role), getattr(params.train, role)
    task = load_task(args.data)
    prepare_outputs(f"models/{role}.pt", f"metrics/{role}.json", f"plots/{role}.csv")
    tracker = Tracker(
        params.tracking,
        f"train_{role}",
        flatten({"model": mcfg, "train": tcfg, "data": params.data}),
        {"data_old": task.content_hash},
        enabled=is_main(),
    ).preflight()
    seed_everything(tcfg.seed)
    model = build_model(
        mcfg.arch, task.num_classes, task.in_channels, task.image_size, mcfg.width, mcfg.depth
    )
    with tracker:
        trainer = Trainer(
            tcfg,
            model,
            task["train"],
            task["val"],
            ckpt_dir=f"checkpoints/{role}",
            fingerprint=fingerprint(mcfg.model_dump(), tcfg.model_dump(), task.content_hash),
            name=role,
            on_epoch=tracker.log_metrics,
        )
        result = trainer.fit()
        model = trainer.model
        metrics = train_summary(result, model)
        metrics["test"] = classification_metrics(predict(model, task["test"][0]), task["test"][1])
        write_stage_outputs(
            model=model,
            meta=model_meta(model_spec(mcfg), task, role=role),
            model_path=f"models/{role}.pt",
            metrics=metrics,
            metrics_path=f"metrics/{role}.json",
            history=result.history,
            plots_path=f"plots/{role}.csv",
            tracker=tracker,
            registered_name=f"kdflow-{role}",
            example=task["test"][0][:1],
        )
        trainer.finish()
    if is_main():
        print(
            f"[{role}] test accuracy {metrics['test']['accuracy']:.4f}, "
            f"{metrics['params']} params, {metrics['train_seconds']:.1f}s"
        )


if __name__ == "__main__":
    run_main(main)
