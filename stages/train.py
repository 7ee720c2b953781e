"""DVC stage `train@teacher` / `train@student`: train a model from scratch on the old task."""

from __future__ import annotations

import argparse

from kdflow.checkpoint import model_meta
from kdflow.config import load_params
from kdflow.distributed import is_main
from kdflow.errors import run_main
from kdflow.metrics import classification_metrics, predict
from kdflow.models import build_model, model_spec
from kdflow.stage import StagePaths, TrainingStage, fingerprint, train_summary
from kdflow.tasks import labelled_train, load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("role", choices=["teacher", "student"])
    ap.add_argument("--data", required=True, help="prepared old task")
    StagePaths.add_arguments(ap)
    args = ap.parse_args()
    role, params = args.role, load_params(args.params)
    mcfg, tcfg = getattr(params.models, role), getattr(params.train, role)
    task = load_task(args.data)
    logged = {"model": mcfg, "train": tcfg, "data": params.data}
    stage = TrainingStage(
        f"train@{role}",
        params,
        StagePaths.from_args(args),
        logged,
        {"data_old": task.content_hash},
        tcfg.seed,
        run_name=f"train@{role} {mcfg.arch} w{mcfg.width} lr={tcfg.lr:g} labels={tcfg.label_fraction:g}",
    )
    model = build_model(
        mcfg.arch, task.num_classes, task.in_channels, task.image_size, mcfg.width, mcfg.depth
    )
    with stage:
        train = labelled_train(task, tcfg.label_fraction, params.data.seed)
        result = stage.fit(
            tcfg,
            model,
            train,
            task["val"],
            name=role,
            fingerprint=fingerprint(mcfg.model_dump(), tcfg.model_dump(), task.content_hash),
        )
        metrics = train_summary(result, model)
        metrics["test"] = classification_metrics(predict(model, task["test"][0]), task["test"][1])
        meta = model_meta(model_spec(mcfg), task, role=role)
        stage.save(model, meta, metrics, f"kdflow-{role}", task["test"][0][:1])
    if is_main():
        print(
            f"[{role}] test accuracy {metrics['test']['accuracy']:.4f}, "
            f"{metrics['params']} params, {stage.seconds:.1f}s"
        )


if __name__ == "__main__":
    run_main(main, exit_now=True)
