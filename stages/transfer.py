"""DVC stage `transfer@<strategy>`: carry the source model to the new task, measure retention."""

from __future__ import annotations

import argparse

from kdflow.checkpoint import load_model, model_meta
from kdflow.config import flatten, load_params
from kdflow.engine import Trainer, classification_metrics, is_main, predict, seed_everything
from kdflow.errors import ParamsError, run_main
from kdflow.io import sha256_file
from kdflow.models import build_model, count_params
from kdflow.runner import fingerprint, prepare_outputs, write_stage_outputs
from kdflow.strategies import STRATEGIES
from kdflow.tasks import load_task
from kdflow.tracking import Tracker
from kdflow.transfer import TransferNet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("strategy")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    cfg, name = params.transfer, args.strategy
    builder = STRATEGIES.get(name)
    if name not in cfg.strategies:
        raise ParamsError(
            f"params.yaml: transfer.strategies = {cfg.strategies} does not list {name!r}; add it"
        )
    opts = cfg.options_for(name)
    old, new = load_task("data/prepared/old"), load_task("data/prepared/new")
    source_path = f"models/{cfg.source}.pt"
    source, ckpt = load_model(source_path, f"transfer source ({cfg.source})", None, old.num_classes)
    from_scratch = bool(getattr(builder, "from_scratch", False))
    prepare_outputs(
        f"models/transfer/{name}.pt", f"metrics/transfer/{name}.json", f"plots/transfer/{name}.csv"
    )
    tracker = Tracker(
        params.tracking,
        f"transfer_{name}",
        flatten({"transfer": {"strategy": name, "source": cfg.source, **opts}, "train": cfg.train}),
        {
            "data_new": new.content_hash,
            "data_old": old.content_hash,
            "source": sha256_file(source_path),
        },
        enabled=is_main(),
    ).preflight()
    seed_everything(cfg.train.seed)
    spec = dict(ckpt["spec"])
    if from_scratch:
        source = build_model(
            spec["arch"],
            old.num_classes,
            new.in_channels,
            new.image_size,
            spec.get("width", 32),
            spec.get("depth", 3),
        )
    model = TransferNet(source, new.num_classes)
    source_old_acc = None
    if not from_scratch:
        source_old_acc = classification_metrics(predict(source, old["test"][0]), old["test"][1])
    phases = builder(model, opts, new["train"][0])
    x_new, y_new = new["test"]
    history: list[dict[str, float]] = []
    trainers = []
    with tracker:
        for i, phase in enumerate(phases):
            epochs = max(1, round(cfg.train.epochs * phase.epoch_fraction))
            pcfg = cfg.train.model_copy(update={"epochs": epochs})
            model.freeze_backbone(phase.freeze_backbone, phase.uses_old_head)
            if phase.objective is not None:
                phase.objective.label_smoothing = pcfg.label_smoothing
            offset = len(history)

            def extra(m, epoch: int, _last=epochs - 1) -> dict[str, float]:
                if (epoch + 1) % 10 and epoch != _last:
                    return {}
                return {
                    "test_accuracy": classification_metrics(predict(m, x_new), y_new)["accuracy"]
                }

            trainer = Trainer(
                pcfg,
                model,
                new["train"],
                None,
                objective=phase.objective,
                param_groups=phase.param_groups,
                ckpt_dir=f"checkpoints/transfer/{name}/{i}",
                fingerprint=fingerprint(
                    name,
                    i,
                    opts,
                    pcfg.model_dump(),
                    ckpt.get("data_hash"),
                    sha256_file(source_path),
                    new.content_hash,
                ),
                name=f"{name}:{phase.name}" if len(phases) > 1 else name,
                extra_metrics=extra,
                on_epoch=lambda m, e, _o=offset: tracker.log_metrics(m, _o + e),
            )
            result = trainer.fit()
            history += [{**h, "phase": float(i)} for h in result.history]
            trainers.append(trainer)
        model.freeze_backbone(False)
        model.eval()
        new_metrics = classification_metrics(predict(model, x_new), y_new)
        old_metrics = None
        if not from_scratch:
            old_metrics = classification_metrics(
                predict(model.old_task(), old["test"][0]), old["test"][1]
            )
        metrics = {
            "strategy": name,
            "source": cfg.source,
            "from_scratch": from_scratch,
            "params": count_params(model),
            "train_seconds": round(sum(h["epoch_seconds"] for h in history), 3),
            "new_task": new_metrics,
            "old_task": {
                "accuracy": old_metrics["accuracy"] if old_metrics else None,
                "source_accuracy": source_old_acc["accuracy"] if source_old_acc else None,
                "retention": (old_metrics["accuracy"] / source_old_acc["accuracy"])
                if old_metrics and source_old_acc
                else None,
            },
        }
        meta = model_meta(
            {**spec, "kind": "transfer", "new_classes": new.num_classes},
            old,
            strategy=name,
            from_scratch=from_scratch,
            new_classes_names=new.class_names,
            new_data_hash=new.content_hash,
        )
        write_stage_outputs(
            model=model,
            meta=meta,
            model_path=f"models/transfer/{name}.pt",
            metrics=metrics,
            metrics_path=f"metrics/transfer/{name}.json",
            history=history,
            plots_path=f"plots/transfer/{name}.csv",
            tracker=tracker,
            registered_name=f"kdflow-transfer-{name}",
            example=x_new[:1],
        )
        for t in trainers:
            t.finish()
    if is_main():
        o = metrics["old_task"]["accuracy"]
        print(
            f"[transfer] {name}: new-task accuracy {new_metrics['accuracy']:.4f}, old-task "
            f"accuracy {'n/a' if o is None else f'{o:.4f}'} ({metrics['train_seconds']:.1f}s)"
        )


if __name__ == "__main__":
    run_main(main)
