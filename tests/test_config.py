"""params.yaml schema: defaults, and one clear line for every mistake."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from kdflow.config import TRAINING_SECTIONS, TrainConfig
from kdflow.errors import ParamsError
from kdflow.params import load_params, parse_params, with_overrides
from tests.conftest import ROOT


def test_params_yaml_is_valid_and_sections_list_only_what_differs() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = parse_params(raw)
    defaults = raw["train"]["defaults"]
    # the shared section spells out every training key the stages share
    assert set(defaults) == set(TrainConfig.model_fields)
    for outer, inner in TRAINING_SECTIONS:
        own = raw[outer].get(inner) or {}
        same = {k for k, v in own.items() if k in defaults and defaults[k] == v}
        assert not same, f"{outer}.{inner} repeats train.defaults for {sorted(same)}"
        resolved = getattr(getattr(params, outer), inner)
        for key, value in {**defaults, **own}.items():
            assert getattr(resolved, key) == value, (outer, inner, key)
    # method and strategy options come from their own files: params.yaml lists overrides only
    assert raw["distill"]["methods"] == {} and raw["transfer"]["options"] == {}
    assert params.distill.method == "kd" and params.data.shots_per_class == 100


def test_a_method_brings_its_own_temperature() -> None:
    """Switching the method gives that method's configuration, not kd's temperature."""
    p = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    kd = p.distill.options()
    assert (kd["temperature"], kd["alpha"], kd["logit_standardization"]) == (1.0, 0.5, False)
    dkd = with_overrides(p, {"distill.method": "dkd"})
    assert dkd.distill.options()["temperature"] == 4.0 and dkd.distill.options()["beta"] == 2.0
    assert with_overrides(p, {"distill.method": "dist"}).distill.options()["temperature"] == 4.0


def test_train_defaults_reach_every_section_unless_it_sets_the_key() -> None:
    p = parse_params({"train": {"defaults": {"lr": 0.2, "batch_size": 32},
                                "teacher": {"lr": 0.5}}})  # fmt: skip
    assert p.train.teacher.lr == 0.5 and p.train.teacher.batch_size == 32
    assert p.train.student.lr == p.distill.train.lr == p.transfer.train.lr == 0.2
    q = with_overrides(p, {"train.defaults.seed": 3})
    assert q.train.teacher.seed == q.distill.train.seed == q.transfer.train.seed == 3


def test_transfer_lr_reaches_strategies_without_their_own() -> None:
    p = parse_params({"transfer": {"train": {"lr": 0.02}}})
    assert p.transfer.options_for("lwf")["lr"] is None  # -> transfer.train.lr
    assert p.transfer.options_for("lp_ft")["lr"] is None
    assert p.transfer.options_for("finetune")["lr"] == 0.03  # its own, chosen by CV


def test_transfer_source_is_a_list_and_a_single_name_still_reads() -> None:
    assert parse_params({}).transfer.source == ["distilled"]  # teacher sources are opt-in
    assert parse_params({"transfer": {"source": "teacher"}}).transfer.source == ["teacher"]
    both = parse_params({"transfer": {"source": ["teacher", "student", "distilled"]}})
    assert both.transfer.source == ["teacher", "student", "distilled"]  # order kept: first leads
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert raw["transfer"]["source"] == ["distilled"]  # a list: dvc.yaml's matrix
    assert "scratch" not in raw["transfer"]["strategies"]  # its own stage, transfer-scratch
    # the scratch baseline's options are filled in although no strategy list names it
    assert parse_params({}).transfer.options_for("scratch")["lr"] == 0.03


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        (
            {"transfer": {"source": ["distilled", "techer"]}},
            [
                "transfer.source = ['distilled', 'techer']",
                "unknown source 'techer'",
                "allowed: distilled, teacher, student",
            ],
        ),
        (
            {"transfer": {"source": "studnet"}},
            ["transfer.source = 'studnet'", "unknown source 'studnet'", "distilled, teacher"],
        ),
        ({"transfer": {"source": []}}, ["transfer.source = []", "at least 1"]),
        ({"transfer": {"source": ["teacher", "teacher"]}}, ["transfer.source", "distinct"]),
        (
            {"transfer": {"strategies": ["scratch", "lwf"]}},
            ["transfer.strategies", "lists 'scratch'", "transfer-scratch", "remove"],
        ),
        ({"data": {"old_classes": [0, 0, 11]}}, ["data.old_classes", "distinct"]),
        ({"data": {"val_fraction": 1.5}}, ["data.val_fraction", "1.5", "less than 1"]),
        (
            {"data": {"dataset": "fashion"}},
            ["data.dataset", "'fashion'", "fashion_mnist", "digits"],
        ),
        ({"data": {"old_classes": [0, 1], "new_classes": [1, 2]}}, ["overlap", "[1]"]),
        ({"data": {"shots_per_class": "many"}}, ["data.shots_per_class", "'many'", "integer"]),
        ({"datta": {}}, ["unknown key datta", "allowed keys", "data"]),
        ({"distill": {"temperature": 4}}, ["unknown key distill.temperature", "methods"]),
        (
            {"distill": {"methods": {"kd": {"temperature": -1}}}},
            ["distill.methods.kd.temperature", "-1", "greater than 0"],
        ),
        (
            {"distill": {"methods": {"kd": {"alpha": 1.5}}}},
            ["distill.methods.kd.alpha", "1.5", "less than or equal to 1"],
        ),
        (
            {"distill": {"methods": {"kd": {"temprature": 4}}}},
            ["unknown key distill.methods.kd.temprature", "temperature"],
        ),
        (
            {"train": {"defaults": {"label_fraction": 0.5}}},
            ["unknown key train.defaults.label_fraction"],
        ),
        (
            {"distill": {"train": {"label_fraction": 0.5}}},
            ["unknown key distill.train.label_fraction"],
        ),
        (
            {"transfer": {"train": {"augment": True}}},
            ["transfer.train.augment", "lwf", "un-augmented"],
        ),
        ({"distill": {"method": "kdd"}}, ["distill.method", "'kdd'", "dkd", "rkd"]),
        ({"models": {"teacher": {"arch": "resnet9"}}}, ["models.teacher.arch", "resnet8x4"]),
        ({"transfer": {"strategies": ["lwf", "magic"]}}, ["transfer.strategies", "lp_ft"]),
        ({"train": {"teacher": {"optimizer": "adam"}}}, ["train.teacher.optimizer", "'adamw'"]),
        ({"train": {"teacher": {"milestones": [0.8, 0.2]}}}, ["milestones", "increasing"]),
        (
            {"transfer": {"options": {"lwf": {"lambda_old": -2}}}},
            ["transfer.options.lwf.lambda_old"],
        ),
        ([1, 2], ["top level must be a mapping"]),
    ],
)
def test_bad_values_give_one_line_naming_key_value_and_allowed(raw, needles) -> None:
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert info.value.exit_code == 2


def test_invalid_yaml_names_the_line(tmp_path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("data:\n  dataset: [digits\n")
    with pytest.raises(ParamsError, match=r"not valid YAML at line \d+"):
        load_params(p)


def test_stage_exits_2_with_one_line_and_no_traceback(tmp_path) -> None:
    (tmp_path / "params.yaml").write_text("data:\n  val_fraction: 1.5\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "stages/prepare.py"),
            "--params",
            "params.yaml",
            "--out",
            "out",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "data.val_fraction = 1.5" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
