"""Teachers (and students) from outside the pipeline: a kdflow checkpoint, a model in the MLflow
registry, torchvision weights on disk; DVC re-runs what a replaced teacher file touches."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import BIN, run_stage, stage_env


def set_params(repo: Path, **changes: object) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        node = params
        *path, last = dotted.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def repo(pipeline_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the reproduced tiny pipeline, with its MLflow store, committed."""
    dest = tmp_path_factory.mktemp("teachers") / "repo"
    shutil.copytree(pipeline_repo, dest, symlinks=True)
    shutil.copy(dest / "models/teacher.pt", dest / "external/teacher/teacher.pt")
    return dest


def test_adopt_a_kdflow_checkpoint_then_distill(repo: Path) -> None:
    set_params(repo, **{"models.teacher.weights": "external/teacher/teacher.pt",
                        "models.teacher.fine_tune": False})  # fmt: skip
    run_stage(repo, "stages/train.py", "teacher")
    got, want = state(repo / "models/teacher.pt"), state(repo / "external/teacher/teacher.pt")
    for k, v in want["state_dict"].items():
        assert torch.equal(got["state_dict"][k], v), k
    assert got["origin"]["kind"] == "checkpoint" and len(got["origin"]["digest"]) == 32
    proc = run_stage(repo, "stages/distill.py")
    assert "[distill]" in proc.stdout


def test_teacher_from_the_mlflow_registry(repo: Path) -> None:
    set_params(repo, **{"models.teacher.weights": "models:/kdflow-teacher@newest",
                        "models.teacher.fine_tune": False})  # fmt: skip
    run_stage(repo, "stages/train.py", "teacher")
    got = state(repo / "models/teacher.pt")
    assert got["origin"]["kind"] == "mlflow" and got["origin"]["digest"].startswith(
        "kdflow-teacher/"
    )
    run_stage(repo, "stages/distill.py")


def test_torchvision_resnet18_with_a_local_weights_file(repo: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), repo / "external/teacher/r18.pth")
    set_params(repo, **{"models.teacher.arch": "tv_resnet18",
                        "models.teacher.weights": "external/teacher/r18.pth",
                        "models.teacher.fine_tune": True, "train.teacher.epochs": 1})  # fmt: skip
    proc = run_stage(repo, "stages/train.py", "teacher")
    assert "new head" in proc.stderr and "RGB filters summed" not in proc.stderr  # digits: 1 ch
    got = state(repo / "models/teacher.pt")
    assert got["spec"]["arch"] == "tv_resnet18" and got["origin"]["kind"] == "state_dict"
    run_stage(repo, "stages/distill.py")


@pytest.mark.parametrize(
    ("weights", "arch", "expect"),
    [
        ("models:/no-such-model@newest", "cnn", "does not resolve"),
        ("external/teacher/r18.pth", "cnn", "does not fit this architecture"),
        ("/etc/hostname", "cnn", "outside external/teacher"),
    ],
    ids=["uri", "other-arch", "outside"],
)
def test_bad_weights_one_line_exit_2(repo: Path, weights: str, arch: str, expect: str) -> None:
    set_params(repo, **{"models.teacher.weights": weights, "models.teacher.arch": arch,
                        "models.teacher.fine_tune": True})  # fmt: skip
    proc = run_stage(repo, "stages/train.py", "teacher", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], proc.stderr


def test_replaced_teacher_file_reruns_teacher_distill_and_after_only(repo: Path) -> None:
    set_params(repo, **{"models.teacher.arch": "cnn", "train.teacher.epochs": 4,
                        "models.teacher.weights": "external/teacher/teacher.pt",
                        "models.teacher.fine_tune": False})  # fmt: skip

    def dvc(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(BIN / "dvc"), *args], cwd=repo, capture_output=True, text=True, timeout=900,
            env=stage_env(repo),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc

    dvc("repro", "distill")
    ckpt = state(repo / "external/teacher/teacher.pt")
    ckpt["state_dict"] = {k: v * 1.01 if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}  # fmt: skip
    torch.save(ckpt, repo / "external/teacher/teacher.pt")
    proc = dvc("repro", "distill")
    ran = {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running")}
    assert {"train@teacher", "distill"} <= ran, ran
    # what follows distill is now out of date (its input changed), and runs on `dvc repro`
    changed = set(json.loads(dvc("status", "--json").stdout or "{}"))
    assert {"transfer@distilled-lwf", "transfer@teacher-finetune", "evaluate"} <= changed, changed
    assert not ran & {"prepare", "train@student"}, ran
