"""DVC stage `train@teacher` / `train@student`: train a model on the old task.

From random init, or from the weights ``models.<role>.weights`` names (a kdflow checkpoint, an
MLflow model, a state dict such as torchvision ImageNet weights): fine-tuned, or, for a finished
model with ``fine_tune: false``, verified and adopted as is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdflow.checkpoint import model_meta
from kdflow.config import load_params
from kdflow.distributed import is_main, launch, seed_everything
from kdflow.errors import run_main
from kdflow.metrics import classification_metrics, predict
from kdflow.models import model_spec
from kdflow.pretrained import check_adoptable, load_initial
from kdflow.stage import StagePaths, TrainingStage, adopted_summary, fingerprint, train_summary
from kdflow.tasks import labelled_train, load_task
from kdflow.tracking import tracking_uri


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("role", choices=["teacher", "student"])
    ap.add_argument("--data", required=True, help="prepared old task")
    ap.add_argument(
        "--external", required=True, type=Path, help="folder DVC tracks for models.<role>.weights"
    )
    StagePaths.add_arguments(ap)
    args = ap.parse_args()
    role, params = args.role, load_params(args.params)
    launch(params.compute)  # several processes: re-run under torch.distributed.run
    mcfg, tcfg = getattr(params.models, role), getattr(params.train, role)
    task = load_task(args.data)
    seed_everything(tcfg.seed)  # a random init depends on the seed only
    model, origin = load_initial(mcfg, task, role, args.external, tracking_uri(params.tracking))
    check_adoptable(origin, mcfg.fine_tune)
    adopt = origin is not None and not mcfg.fine_tune
    logged = {"model": mcfg, "train": tcfg, "data": params.data}
    inputs = {"data_old": task.content_hash, **({"weights": origin.digest} if origin else {})}
    title = f"train@{role} {mcfg.arch} w{mcfg.width}"
    title += (
        f" adopted {origin.weights}" if adopt else f" lr={tcfg.lr:g} labels={tcfg.label_fraction:g}"
    )
    title += f" from {origin.weights}" if origin and not adopt else ""
    stage = TrainingStage(
        f"train@{role}", params, StagePaths.from_args(args), logged, inputs, tcfg.seed, title
    )
    with stage:
        if origin:
            stage.tracker.set_tags({f"kdflow.origin.{k}": v for k, v in origin.as_dict().items()})
        if adopt:  # a finished model: verified on load, measured here, not trained
            metrics = adopted_summary(model, task["val"])
        else:
            train = labelled_train(task, tcfg.label_fraction, params.data.seed)
            result = stage.fit(
                tcfg,
                model,
                train,
                task["val"],
                name=role,
                fingerprint=fingerprint(
                    mcfg.model_dump(), tcfg.model_dump(), task.content_hash, inputs
                ),
            )
            metrics = train_summary(result, model)
        metrics["test"] = classification_metrics(predict(model, task["test"][0]), task["test"][1])
        meta = model_meta(
            model_spec(mcfg), task, role=role, origin=origin.as_dict() if origin else None
        )
        stage.save(model, meta, metrics, f"kdflow-{role}", task["test"][0][:1])
    if is_main():
        print(
            f"[{role}] test accuracy {metrics['test']['accuracy']:.4f}, "
            f"{metrics['params']} params, {stage.seconds:.1f}s"
        )


if __name__ == "__main__":
    run_main(main, exit_now=True)
