"""Stage ``transfer@<strategy>``: the source model carried to the new task; what it kept."""

from __future__ import annotations

from kdflow.checkpoint import load_model, model_meta
from kdflow.distributed import is_main, launch
from kdflow.errors import ParamsError
from kdflow.io import sha256_file
from kdflow.metrics import classification_metrics, predict
from kdflow.params import load_params
from kdflow.pipeline import recipes
from kdflow.pipeline.stage import StagePaths, TrainingStage
from kdflow.tasks import load_task
from kdflow.transfer import transfer_summary


def run_transfer(
    name: str, params_file: str, old_dir: str, new_dir: str, source_file: str, paths: StagePaths
) -> None:
    params = load_params(params_file)
    launch(
        params.compute, f"transfer@{name}", params_file
    )  # several processes: torch.distributed.run
    cfg, scratch = params.transfer, recipes.from_scratch(name)  # an unknown name: one line
    if name not in cfg.strategies:
        raise ParamsError(
            f"params.yaml: transfer.strategies = {cfg.strategies} does not list {name!r}; add it"
        )
    opts = cfg.options_for(name)
    old, new = load_task(old_dir), load_task(new_dir)
    if new.num_classes == 0:
        raise ParamsError("params.yaml: data.new_classes = [] leaves no new task to transfer to")
    source, ckpt = load_model(source_file, f"transfer source ({cfg.source})", None, old.num_classes)
    logged = {"transfer": {"strategy": name, "source": cfg.source, **opts}, "train": cfg.train}
    inputs = {"data_new": new.content_hash, "data_old": old.content_hash,
              "source": sha256_file(source_file)}  # fmt: skip
    title = f"transfer@{name} from {cfg.source}" + (f" lr={opts['lr']:g}" if opts.get("lr") else "")
    upstream = {} if scratch else {"source": ckpt.get("lineage") or {}}
    datasets = [(new, ("train", "test")), (old, ("test",))]
    stage = TrainingStage(
        f"transfer@{name}", params, paths, logged, inputs, title, upstream, datasets
    )
    x_old, y_old = old["test"]
    before = None if scratch else classification_metrics(predict(source, x_old), y_old)["accuracy"]
    model, phases = recipes.transfer_setup(params, name, source, ckpt["spec"], old, new)
    with stage:
        with stage.working():  # a solved linear probe is work too
            chosen = recipes.transfer_train(
                opts, cfg.train, model, phases, new["train"], stage.fit, name
            )
        summary = transfer_summary(model, new["test"], old["test"], before)
        metrics = {"strategy": name, "source": cfg.source, "from_scratch": scratch, **summary}
        metrics["solved"] = chosen
        spec = {**ckpt["spec"], "kind": "transfer", "new_classes": new.num_classes}
        meta = model_meta(
            spec, old, strategy=name, from_scratch=scratch, new_classes_names=new.class_names,
            new_data_hash=new.content_hash,
        )  # fmt: skip
        stage.save(model, meta, metrics, f"kdflow-transfer-{name}", new["test"][0][:1])
    if is_main():
        o = metrics["old_task"]["accuracy"]
        print(
            f"[transfer] {name}: new-task accuracy {metrics['new_task']['accuracy']:.4f}, old-task "
            f"accuracy {'n/a' if o is None else f'{o:.4f}'} ({stage.seconds:.1f}s)"
        )
