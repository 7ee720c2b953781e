"""Any architecture as teacher or student: timm, torchvision and a user's own nn.Module behind
one interface, named layers for the feature losses, strict weights files."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from kdflow.checkpoint import load_model, save_model
from kdflow.config import TrainConfig
from kdflow.distill import DistillObjective, freeze, probe_dims
from kdflow.errors import ParamsError
from kdflow.losses import LOSSES
from kdflow.models import MODELS, build_for_task, build_model, check_arch, resolve_layers
from kdflow.params import validate_options
from kdflow.pipeline.recipes import plain_fit, transfer_train
from kdflow.pretrained import load_initial
from kdflow.seed import seed_everything
from kdflow.strategies import STRATEGIES
from kdflow.tasks import load_task
from kdflow.transfer import TransferNet, build_phases

pytest.importorskip("timm")

TEACHER, STUDENT = "timm:test_resnet", "torchvision:mobilenet_v3_small"
OWN = "tests.own_models.tutorial:TutorialNet"
CFG = TrainConfig(epochs=1, batch_size=32, lr=3e-3, device="cpu", select="last", amp=False)
SIZE = 32  # digits are 8x8: upsampled, as the tutorial network and these nets expect 32x32


def _task(digits_dir: Path, split: str, n: int = 60) -> SimpleNamespace:
    """A digits task at 32x32: ``n`` training images (few steps), the test split for checks."""
    task = load_task(digits_dir / split)

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=SIZE, mode="bilinear", align_corners=False)

    (x, y), (xt, yt) = task["train"], task["test"]
    pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:n]
    test = torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))[:40]
    return SimpleNamespace(
        num_classes=task.num_classes, in_channels=1, image_size=SIZE,
        train=(up(x[pick]), y[pick]), test=(up(xt[test]), yt[test]),
    )  # fmt: skip


@pytest.fixture(scope="module")
def old(digits_dir: Path) -> SimpleNamespace:
    return _task(digits_dir, "old")


@pytest.fixture(scope="module")
def new(digits_dir: Path) -> SimpleNamespace:
    return _task(digits_dir, "new", n=40)


def _spec(arch: str, **kwargs: object) -> dict:
    spec = {"arch": arch, "width": 32, "depth": 3}
    return {**spec, "kwargs": kwargs} if kwargs else spec


def _distil(teacher: torch.nn.Module, student: torch.nn.Module, method: str, options: dict, old):
    """What ``distill.build_objective`` does, with the layer names resolved on the models."""
    opts = resolve_layers(method, validate_options(LOSSES, "distill.methods", method, options),
                          student, teacher)  # fmt: skip
    probe = old.train[0][:2]
    loss = LOSSES.build(method, opts, probe_dims(student, probe), probe_dims(teacher, probe))
    objective = DistillObjective(loss, [teacher])
    return loss, plain_fit(CFG, student, old.train, None, objective=objective)


def _transfers(source: torch.nn.Module, new) -> None:
    """linear_probe leaves the old task untouched; lwf trains the backbone and the new head."""
    for name in ("linear_probe", "lwf"):
        seed_everything(0)
        model = TransferNet(copy.deepcopy(source), new.num_classes)
        opts = validate_options(STRATEGIES, "transfer.options", name, {})
        before = {k: v.clone() for k, v in model.net.state_dict().items()}
        transfer_train(opts, CFG, model, build_phases(name, opts, model, new.train[0]), new.train)
        logits = model.eval()(new.test[0])
        assert logits.shape == (len(new.test[0]), new.num_classes) and logits.isfinite().all()
        after = model.net.state_dict()
        same = all(torch.equal(before[k], after[k]) for k in before)
        assert same == (name == "linear_probe"), name


def test_timm_teacher_into_torchvision_student_at_named_layers(old, new, tmp_path: Path) -> None:
    seed_everything(0)
    teacher = build_for_task(_spec(TEACHER), old)  # untrained: the wiring is what is tested
    student = build_for_task(_spec(STUDENT), old)
    assert teacher.stage_names()[-2:] == ["layer3", "layer4"]

    # FitNets at named layers (4x4 maps on both sides): the regressor is sized from them
    frozen = freeze(copy.deepcopy(teacher))
    named = {"student_layer": "features.3", "teacher_layer": "layer2"}
    hint, result = _distil(frozen, student, "fitnet", named, old)
    assert hint.regressor[0].in_channels == 24 and hint.regressor[0].out_channels == 48
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)

    # AT: a tapped module against a stage, and an integer pair index as before; RKD likewise
    at, _ = _distil(frozen, student, "at", {"layers": [["features.6", "layer3"], -1]}, old)
    assert at.pairs == [(5, 3), (4, 4)]  # features.6 is not a stage: tapped after the 5 stages
    rkd, _ = _distil(frozen, student, "rkd", {"student_layer": "features.6",
                                               "teacher_layer": -2}, old)  # fmt: skip
    assert (rkd.student_layer, rkd.teacher_layer) == (5, 3)

    for net, arch in ((student, STUDENT), (teacher, TEACHER)):
        _transfers(net, new)
        meta = {"spec": _spec(arch), "num_classes": 5, "in_channels": 1, "image_size": SIZE}
        path = save_model(tmp_path / "m.pt", net, meta)
        back, _ = load_model(path, expect_spec=_spec(arch), expect_classes=5)
        x = old.test[0][:4]
        assert torch.allclose(back(x), net.eval()(x), atol=1e-6)  # net: channels_last


def test_a_wrong_layer_name_is_one_line(old) -> None:
    student = build_for_task(_spec(STUDENT), old)
    teacher = build_model("cnn", 5, 1, SIZE, width=8, depth=2)
    with pytest.raises(ParamsError, match=r"fitnet.teacher_layer = 'stages.9'.*stages.0, stages.1"):
        resolve_layers("fitnet", {"student_layer": -1, "teacher_layer": "stages.9"},
                       student, teacher)  # fmt: skip
    with pytest.raises(ParamsError, match=r"close: features\.8"):
        resolve_layers("at", {"layers": ["features.88"]}, student, student)
    # integer layers resolve to the stage indices they always meant; names tap any module
    assert resolve_layers("fitnet", {"student_layer": -1, "teacher_layer": 0}, teacher,
                          teacher) == {"student_layer": 1, "teacher_layer": 0}  # fmt: skip
    opts = resolve_layers("fitnet", {"student_layer": "stages.1", "teacher_layer": "stages.0.1"},
                          teacher, teacher)  # fmt: skip
    assert opts == {"student_layer": 1, "teacher_layer": 2}
    feats = teacher(torch.randn(2, 1, SIZE, SIZE), with_features=True).features
    assert len(feats) == 3 and feats[2].shape == (2, 8, SIZE, SIZE)  # BN output of stage 0


def test_own_module_by_import_path(old, new, tmp_path: Path) -> None:
    check_arch(OWN)
    seed_everything(0)
    spec = _spec(OWN, hidden=64)
    net = build_for_task(spec, old)
    assert net.feat_dim == 64 and net.head.out_features == 5
    assert net.body.conv1.in_channels == 1  # the constructor was given the task's channels
    assert net.stage_names() == ["conv1", "conv2", "pool"]
    plain_fit(CFG, net, old.train)
    _transfers(net, new)
    # the spec (with kwargs) rebuilds the same network, e.g. from a checkpoint
    again = build_for_task(spec, old)
    again.load_state_dict(net.state_dict())
    x = old.test[0][:4]
    assert torch.allclose(again.eval()(x), net.eval()(x), atol=1e-6)
    path = save_model(tmp_path / "own.pt", net, {"spec": spec, "num_classes": 5,
                                                 "in_channels": 1, "image_size": SIZE})  # fmt: skip
    back, _ = load_model(path, expect_spec=spec, expect_classes=5)
    assert torch.allclose(back(x), net(x), atol=1e-6)


@pytest.mark.parametrize(
    ("arch", "expect"),
    [
        ("os:system", "not a module file of this repository"),
        ("subprocess:Popen", "not a module file of this repository"),
        ("tests.own_models.missing:Net", "not a module file of this repository"),
        ("timm:", "name a model"),
        ("resnet9", "valid: cnn"),
        ("tests/own_models:Net", "is not allowed"),
    ],
)
def test_arch_refused_in_one_line(arch: str, expect: str) -> None:
    with pytest.raises(ParamsError, match=expect) as info:
        check_arch(arch, "models.teacher.arch")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("arch", "kwargs", "expect"),
    [
        ("timm:test_resnett", {}, "close: test_resnet"),
        ("torchvision:resnet19", {}, "close: resnet18"),
        ("timm:test_resnet", {"pretrained": True}, "may not set pretrained"),
        (OWN, {"hiden": 3}, "unexpected keyword argument 'hiden'"),
        (OWN, {"hidden": 8}, None),  # ok at 32x32 ...
        ("cnn", {"hidden": 8}, "not kwargs"),
    ],
)
def test_build_errors_are_one_line(arch: str, kwargs: dict, expect: str | None) -> None:
    if expect is None:
        with pytest.raises(ParamsError, match=r"does not run on 1x16x16 input"):  # ... not 16
            build_model(arch, 5, 1, 16, kwargs=kwargs)
        return
    with pytest.raises(ParamsError, match=expect) as info:
        build_model(arch, 5, 1, SIZE, kwargs=kwargs)
    assert "\n" not in str(info.value)


def _load(arch: str, state: dict, tmp_path: Path, channels: int = 1, **kwargs: object):
    path = tmp_path / "w.pth"
    torch.save(state, path)
    cfg = SimpleNamespace(arch=arch, width=32, depth=3, weights=str(path), fine_tune=True,
                          kwargs=kwargs)  # fmt: skip
    task = SimpleNamespace(num_classes=5, in_channels=channels, image_size=SIZE)
    return load_initial(cfg, task, "teacher")


def test_weights_files_are_used_whole(tmp_path: Path) -> None:
    from tests.own_models.tutorial import TutorialNet

    torch.manual_seed(1)
    state = TutorialNet(hidden=64).state_dict()  # RGB, 10 classes
    model, origin = _load(OWN, state, tmp_path, hidden=64)
    assert origin.kind == "state_dict" and "RGB filters summed" in origin.note
    assert "new head" in origin.note
    assert torch.equal(model.body.conv2.weight, state["conv2.weight"])
    assert torch.equal(model.body.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))

    extra = {**state, "conv3.weight": torch.zeros(1)}
    missing = {k: v for k, v in state.items() if k != "conv2.bias"}
    for bad, name in ((extra, "conv3.weight in the file is not used"),
                      (missing, "conv2.bias is missing from the file")):  # fmt: skip
        with pytest.raises(ParamsError, match=name) as info:
            _load(OWN, bad, tmp_path, hidden=64)
        assert "\n" not in str(info.value) and "does not fit this architecture" in str(info.value)

    import torchvision

    r34 = torchvision.models.resnet34().state_dict()  # into an 18: 96 tensors were dropped
    for arch in ("tv_resnet18", "torchvision:resnet18"):
        with pytest.raises(ParamsError, match=r"layer1\.2\.conv1\.weight in the file is not used"):
            _load(arch, r34, tmp_path)
    timm_state = build_model(TEACHER, 1000, 3, SIZE).body.state_dict()
    timm_state |= {"fc.weight": torch.zeros(1000, 96), "fc.bias": torch.zeros(1000)}
    model, origin = _load(TEACHER, timm_state, tmp_path)  # timm's own names, fc as the head
    assert "new head" in origin.note and "RGB filters summed" in origin.note


EXISTING = {  # sha256 of the state dicts (width 8, depth 3; 1x28 and 3x128) before adapters
    "cnn": "12743e16c87d2722", "resnet20": "548fc0945f4cb2f9", "resnet32x4": "2f30fe136f9127c0",
    "resnet56": "23df465c00ed4816", "resnet8x4": "1a72d9cb30b73090",
    "tv_mobilenet_v3_small": "7077579942cedc0a", "tv_resnet18": "1c6d72d219d2c628",
    "tv_resnet34": "40152c23a8952d7f", "tv_resnet50": "c8e774c37bc0b84b",
    "wrn_16_2": "328698cadbec50a7", "wrn_40_2": "ed1c9a102de72f45",
}  # fmt: skip


@pytest.mark.parametrize("arch", sorted(EXISTING))
def test_registered_architectures_build_the_same_parameters(arch: str) -> None:
    assert arch in MODELS.names()
    h = hashlib.sha256()
    for c, s in ((1, 28), (3, 128)):
        torch.manual_seed(0)
        net = build_model(arch, 7, c, s, width=8, depth=3)
        for k, v in net.state_dict().items():
            h.update(k.encode())
            h.update(v.contiguous().numpy().tobytes())
    assert h.hexdigest()[:16] == EXISTING[arch]
