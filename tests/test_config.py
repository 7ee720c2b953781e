"""params.yaml schema: defaults, and one clear line for every mistake."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from kdflow.config import Params, load_params, parse_params
from kdflow.errors import ParamsError
from kdflow.tracking import flatten_params as flatten
from tests.conftest import ROOT


def test_params_yaml_is_valid_and_spells_out_every_default() -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = parse_params(raw)
    # every key of the schema is written in params.yaml (with the per-method option blocks)
    free = ("distill.methods", "transfer.options")
    written = set(flatten(raw))
    missing = {k for k in flatten(Params()) if k not in written and not k.startswith(free)}
    assert not missing, f"params.yaml lacks {sorted(missing)}"
    from kdflow.losses import LOSSES

    for name in LOSSES.names():
        schema = LOSSES.schema(name)
        if schema is not None:
            assert set(raw["distill"]["methods"][name]) == set(schema.model_fields), name
    # the schema's defaults are the ones written in params.yaml
    free = {"methods", "options"}
    assert params.model_dump(exclude={"distill": free, "transfer": free}) == Params().model_dump(
        exclude={"distill": free, "transfer": free}
    )
    assert params.data.shots_per_class == 100
    assert params.distill.method == "kd"


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        ({"data": {"old_classes": [0, 0, 11]}}, ["data.old_classes", "distinct"]),
        ({"data": {"val_fraction": 1.5}}, ["data.val_fraction", "1.5", "less than 1"]),
        (
            {"data": {"dataset": "fashion"}},
            ["data.dataset", "'fashion'", "fashion_mnist", "digits"],
        ),
        ({"data": {"old_classes": [0, 1], "new_classes": [1, 2]}}, ["overlap", "[1]"]),
        ({"data": {"shots_per_class": "many"}}, ["data.shots_per_class", "'many'", "integer"]),
        ({"datta": {}}, ["unknown key datta", "allowed keys", "data"]),
        ({"distill": {"temprature": 4}}, ["unknown key distill.temprature", "temperature"]),
        ({"distill": {"temperature": -1}}, ["distill.temperature", "-1", "greater than 0"]),
        ({"distill": {"alpha": 1.5}}, ["distill.alpha", "1.5", "less than or equal to 1"]),
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
