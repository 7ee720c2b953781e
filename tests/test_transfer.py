"""Transfer strategies: linear probe changes nothing old; LwF forgets less than fine-tuning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdflow.config import TrainConfig
from kdflow.metrics import predict
from kdflow.models import build_model
from kdflow.params import validate_options
from kdflow.pipeline.recipes import transfer_train
from kdflow.seed import seed_everything
from kdflow.strategies import STRATEGIES
from kdflow.tasks import load_task
from kdflow.trainer import Trainer
from kdflow.transfer import TransferNet, build_phases

CFG = TrainConfig(epochs=30, batch_size=32, lr=0.01, device="cpu", select="last")


@pytest.fixture(scope="module")
def source(digits_dir: Path) -> torch.nn.Module:
    old = load_task(digits_dir / "old")
    seed_everything(0)
    net = build_model("cnn", 5, 1, 8, width=16, depth=2)
    Trainer(CFG.model_copy(update={"epochs": 8}), net, old["train"], old["val"]).fit()
    return net.eval()


def _transfer(
    source: torch.nn.Module, digits_dir: Path, name: str, lr: float = 0.01, **options: float
) -> TransferNet:
    import copy

    new = load_task(digits_dir / "new")
    seed_everything(0)
    model = TransferNet(copy.deepcopy(source), new.num_classes)
    opts = validate_options(STRATEGIES, "transfer.options", name, options)
    opts = {**opts, "lr": None} if "lr" in opts else opts  # the test sets lr
    phases = build_phases(name, opts, model, new["train"][0])
    transfer_train(opts, CFG.model_copy(update={"lr": lr}), model, phases, new["train"])
    return model.eval()


def _old_acc(model: torch.nn.Module, digits_dir: Path) -> float:
    x, y = load_task(digits_dir / "old")["test"]
    return float((predict(model, x).argmax(1) == y).float().mean())


def _new_acc(model: torch.nn.Module, digits_dir: Path) -> float:
    x, y = load_task(digits_dir / "new")["test"]
    return float((predict(model, x).argmax(1) == y).float().mean())


def test_linear_probe_leaves_backbone_and_bn_bit_identical(source, digits_dir: Path) -> None:
    before = {k: v.clone() for k, v in source.state_dict().items()}
    model = _transfer(source, digits_dir, "linear_probe")
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} moved"
    assert _old_acc(model.old_task(), digits_dir) == _old_acc(source, digits_dir)
    assert _new_acc(model, digits_dir) > 0.5  # chance is 0.2


def test_lwf_forgets_less_than_finetune(source, digits_dir: Path) -> None:
    src = _old_acc(source, digits_dir)
    # an aggressive fine-tune (full learning rate on the backbone) forgets; LwF holds on
    ft = _old_acc(
        _transfer(source, digits_dir, "finetune", lr=0.03, backbone_lr_mult=1.0).old_task(),
        digits_dir,
    )
    lwf_model = _transfer(source, digits_dir, "lwf", lr=0.03)
    lwf = _old_acc(lwf_model.old_task(), digits_dir)
    assert lwf > ft + 0.05, (src, ft, lwf)
    assert _new_acc(lwf_model, digits_dir) > 0.6


def test_every_strategy_learns_the_new_task(source, digits_dir: Path) -> None:
    for name in ("scratch", "lp_ft"):
        assert _new_acc(_transfer(source, digits_dir, name), digits_dir) > 0.5, name


@pytest.mark.parametrize("name", ["finetune", "lp_ft"])
def test_frozen_bn_keeps_running_statistics_and_trains_the_rest(
    source, digits_dir: Path, name: str
) -> None:
    def stats(net: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in net.state_dict().items() if "running_" in k}

    before = stats(source)
    assert before  # the cnn has BatchNorm
    frozen = _transfer(source, digits_dir, name, bn="frozen")
    for k, v in stats(frozen.net).items():
        assert torch.equal(v, before[k]), f"{k} moved"
    moved = _transfer(source, digits_dir, name)  # bn: train, the default
    assert any(not torch.equal(v, before[k]) for k, v in stats(moved.net).items())
    conv = next(k for k, v in source.state_dict().items() if v.dim() == 4)
    assert not torch.equal(frozen.net.state_dict()[conv], source.state_dict()[conv])
    assert _new_acc(frozen, digits_dir) > 0.5


def test_linear_probe_stays_eval_while_training(source) -> None:
    model = TransferNet(source, 3)
    model.freeze_backbone(True)
    model.train()
    assert not model.net.training and model.new_head.training
    assert not any(p.requires_grad for p in model.net.parameters())


def test_cv_transfer_with_fewer_shots_than_folds(source, digits_dir: Path) -> None:
    from kdflow.errors import ParamsError
    from kdflow.params import parse_params
    from kdflow.pipeline.cv import cv_transfer, fold_indices

    y = torch.tensor([0, 0, 0, 1, 1, 1])  # 3 shots per class, 5 folds asked for
    assert len(fold_indices(y, 5)) == 3
    with pytest.raises(ParamsError, match="at least 2 labelled images per class"):
        fold_indices(torch.tensor([0, 0, 1]), 5)
    old, new = load_task(digits_dir / "old"), load_task(digits_dir / "new")
    x, y = new["train"]
    keep = torch.zeros_like(y, dtype=torch.bool)
    for c in range(5):
        keep[torch.nonzero(y == c).flatten()[:3]] = True
    few = type(new)(new.path, {**new.splits, "train": (x.subset(keep), y[keep])}, new.manifest)
    params = parse_params({"transfer": {"train": {"epochs": 2, "min_steps": 0}}})
    spec = {"arch": "cnn", "width": 16, "depth": 2}
    acc = cv_transfer(params, "linear_probe", source, spec, old, few)
    assert 0.0 <= acc <= 1.0


def test_probe_folds_follow_the_transfer_seed(source, digits_dir: Path) -> None:
    from kdflow.probe import embeddings, fit_logistic

    new = load_task(digits_dir / "new")
    feats, y = embeddings(source, new["train"][0]), new["train"][1].numpy()
    runs = {seed: fit_logistic(feats, y, seed=seed)[2]["cv_accuracy"] for seed in (0, 0, 1, 2, 3)}
    assert len(set(runs.values())) > 1  # the folds, and so the CV score, depend on the seed
    model = TransferNet(source, new.num_classes)
    phase = build_phases("linear_probe", {}, model, new["train"][0])[0]
    a = phase.solve(model, *new["train"], 0)["cv_accuracy"]
    b = phase.solve(model, *new["train"], 3)["cv_accuracy"]
    assert (a == runs[0]) and (b == runs[3])
