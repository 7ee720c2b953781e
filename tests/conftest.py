"""Shared fixtures: small real data (scikit-learn digits) and a tiny pipeline repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# What the tiny pipeline (tiny_params) transfers: each source with each strategy, plus scratch.
SOURCES = ("distilled", "teacher")
STRATEGIES = ("linear_probe", "finetune", "lp_ft", "lwf")
TRANSFERS = [f"{src}-{s}" for src in SOURCES for s in STRATEGIES]  # models/transfer/<name>.pt
TRANSFER_STAGES = {f"transfer@{t}" for t in TRANSFERS} | {"transfer-scratch"}


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kdflow.config import DataConfig
    from kdflow.tasks import prepare

    out = tmp_path_factory.mktemp("digits")
    prepare(DataConfig(dataset="digits", shots_per_class=20), out)
    return out


# a Trainer config that learns in epoch 1, then leaves its basin at the one-cycle peak
DIVERGES = {"epochs": 8, "batch_size": 64, "lr": 2.0, "optimizer": "sgd", "schedule": "onecycle",
            "min_steps": 0, "device": "cpu", "channels_last": False}  # fmt: skip


def mlp(x):
    """A small seeded MLP for the images ``x`` (5 classes: the digits fixture's old task)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(x[:1].numel(), 32), nn.ReLU(), nn.Linear(32, 5))


def method_loss(name: str, **options: object):
    """A distillation loss built as the stages build it: options validated, then the registry."""
    from kdflow.losses import LOSSES
    from kdflow.params import validate_options

    return LOSSES.build(name, validate_options(LOSSES, "distill.methods", name, options), [], [])


def tiny_params() -> dict:
    """params.yaml for a pipeline run on digits that takes seconds per stage."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(dataset="digits", shots_per_class=20)
    params["models"]["teacher"].update(width=16, depth=2)
    params["models"]["student"].update(width=4, depth=2)
    for section in (
        params["train"]["teacher"],
        params["train"]["student"],
        params["distill"]["train"],
    ):
        section.update(epochs=4, batch_size=64, min_steps=0)
    params["transfer"]["train"].update(epochs=6, batch_size=32, min_steps=30)
    params["transfer"].update(source=list(SOURCES), strategies=list(STRATEGIES))
    params["evaluate"].update(latency_repeats=5, throughput_batch=64)
    return params


def make_repo(dest: Path, params: dict | None = None) -> Path:
    """A fresh git + DVC repository holding the pipeline, with the given params."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "stages", ".gitignore", "external", "models_src"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    # deps of the prepare stage point into src/: link the library sources in
    (dest / "src").mkdir()
    shutil.copytree(
        ROOT / "src" / "kdflow",
        dest / "src" / "kdflow",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (dest / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    run = lambda *a: subprocess.run(a, cwd=dest, check=True, capture_output=True, env=env)  # noqa: E731
    run("git", "init", "-q", "-b", "main")
    run(str(BIN / "dvc"), "init", "-q")
    shutil.copy(ROOT / ".dvc/config", dest / ".dvc/config")  # analytics off, local remote
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "init")
    return dest


def stage_env(repo: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONUNBUFFERED="1", **extra)
    return env


def stage_argv(repo: Path, script: str, *rest: str) -> list[str]:
    """The arguments dvc.yaml gives ``script`` (with ``rest[0]`` as a foreach item or a matrix
    key such as ``distilled-lwf``; ``stages/transfer.py scratch`` is stage ``transfer-scratch``).

    Tests run stages exactly as DVC would, paths included, without going through DVC. Matrix
    keys are split, not looked up in params.yaml: it may be broken on purpose (bad-input tests).
    """
    import shlex

    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    name = Path(script).stem
    stages = spec["stages"]
    if rest and f"{name}-{rest[0]}" in stages:  # a plain stage named for its item
        cmd, extra = stages[f"{name}-{rest[0]}"]["cmd"], list(rest[1:])
    elif "do" in stages[name]:  # foreach
        cmd, extra = stages[name]["do"]["cmd"].replace("${item}", rest[0]), list(rest[1:])
    elif "matrix" in stages[name]:  # DVC joins the values of the matrix keys with "-"
        keys = list(stages[name]["matrix"])
        values = rest[0].split("-", len(keys) - 1)
        assert len(values) == len(keys), (rest[0], keys)
        cmd, extra = stages[name]["cmd"], list(rest[1:])
        for key, value in zip(keys, values, strict=True):
            cmd = cmd.replace("${item." + key + "}", value)
    else:
        cmd, extra = stages[name]["cmd"], list(rest)
    for block in spec.get("vars", []):
        for key, value in block.items():
            cmd = cmd.replace("${" + key + "}", str(value))
    assert "${" not in cmd, cmd
    return shlex.split(cmd)[1:] + extra


def run_stage(repo: Path, *args: str, check: bool = True, timeout: int = 300, **env: str):
    """Run ``python stages/<args>`` in ``repo`` as a real process, with dvc.yaml's paths."""
    if args and args[0].startswith("stages/"):
        args = tuple(stage_argv(repo, *args))
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=stage_env(repo, **env),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny repository on which the full `dvc repro` has run once."""
    repo = make_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    proc = subprocess.run(
        [str(BIN / "dvc"), "repro"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=1800,  # 14 stages (two transfer sources): minutes on a busy 2-core machine
        env=stage_env(repo),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return repo
