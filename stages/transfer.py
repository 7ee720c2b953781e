"""DVC stage `transfer@<strategy>`: carry the source model to the new task, measure retention."""

from __future__ import annotations

import argparse

from kdflow.checkpoint import load_model, model_meta
from kdflow.config import load_params
from kdflow.distributed import is_main, launch
from kdflow.errors import ParamsError, run_main
from kdflow.io import sha256_file
from kdflow.metrics import classification_metrics, predict
from kdflow.stage import StagePaths, TrainingStage, fingerprint
from kdflow.strategies import STRATEGIES
from kdflow.tasks import load_task
from kdflow.transfer import fit_in_stage, strategy_config, transfer_model, transfer_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("strategy")
    ap.add_argument("--old", required=True, help="prepared old task")
    ap.add_argument("--new", required=True, help="prepared new task")
    ap.add_argument("--source", required=True, help="checkpoint carried to the new task")
    StagePaths.add_arguments(ap)
    args = ap.parse_args()
    params = load_params(args.params)
    launch(params.compute)  # several processes: re-run under torch.distributed.run
    cfg, name = params.transfer, args.strategy
    builder = STRATEGIES.get(name)
    if name not in cfg.strategies:
        raise ParamsError(
            f"params.yaml: transfer.strategies = {cfg.strategies} does not list {name!r}; add it"
        )
    opts, scratch = cfg.options_for(name), STRATEGIES.meta(name).get("from_scratch", False)
    old, new = load_task(args.old), load_task(args.new)
    if new.num_classes == 0:
        raise ParamsError("params.yaml: data.new_classes = [] leaves no new task to transfer to")
    source, ckpt = load_model(args.source, f"transfer source ({cfg.source})", None, old.num_classes)
    source_hash = sha256_file(args.source)
    logged = {"transfer": {"strategy": name, "source": cfg.source, **opts}, "train": cfg.train}
    inputs = {"data_new": new.content_hash, "data_old": old.content_hash, "source": source_hash}
    title = f"transfer@{name} from {cfg.source}" + (f" lr={opts['lr']:g}" if opts.get("lr") else "")
    paths = StagePaths.from_args(args)
    upstream = {} if scratch else {"source": ckpt.get("lineage") or {}}
    stage = TrainingStage(
        f"transfer@{name}",
        params,
        paths,
        logged,
        inputs,
        cfg.train.seed,
        run_name=title,
        upstream=upstream,
    )
    model = transfer_model(source, ckpt["spec"], old.num_classes, new, scratch)
    x_new, y_new = new["test"]
    x_old, y_old = old["test"]
    before = None if scratch else classification_metrics(predict(source, x_old), y_old)["accuracy"]
    phases = builder(model, opts, new["train"][0])

    def fp(i: int, pcfg) -> str:
        parts = (opts, pcfg.model_dump(), ckpt.get("data_hash"), source_hash, new.content_hash)
        return fingerprint(name, i, *parts)

    with stage:
        tcfg = strategy_config(cfg.train, opts)
        with stage.working():  # a solved linear probe is work too
            chosen = fit_in_stage(stage, model, phases, tcfg, new["train"], fp, name)
        summary = transfer_summary(model, (x_new, y_new), (x_old, y_old), before)
        metrics = {"strategy": name, "source": cfg.source, "from_scratch": scratch, **summary}
        metrics["solved"] = chosen
        spec = {**ckpt["spec"], "kind": "transfer", "new_classes": new.num_classes}
        meta = model_meta(
            spec, old, strategy=name, from_scratch=scratch, new_classes_names=new.class_names,
            new_data_hash=new.content_hash,
        )  # fmt: skip
        stage.save(model, meta, metrics, f"kdflow-transfer-{name}", x_new[:1])
    if is_main():
        o = metrics["old_task"]["accuracy"]
        print(
            f"[transfer] {name}: new-task accuracy {metrics['new_task']['accuracy']:.4f}, old-task "
            f"accuracy {'n/a' if o is None else f'{o:.4f}'} ({stage.seconds:.1f}s)"
        )


if __name__ == "__main__":
    run_main(main, exit_now=True)
