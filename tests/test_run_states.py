"""Run states that tell the truth, on a real repository with real `dvc repro`: a stage killed
with SIGKILL is closed by the next stage (KILLED, what replaced it, its stale checkpoint gone);
SIGTERM ends a stage and its pipeline KILLED; a pipeline stopped short of evaluate is SCHEDULED;
a failing stage ends the pipeline FAILED, and the re-run continues that same pipeline run to
FINISHED."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import BIN, make_repo, stage_argv, stage_env, tiny_params

pytestmark = pytest.mark.slow


def dvc(repo: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, capture_output=True, text=True,
                          timeout=900, env=stage_env(repo))  # fmt: skip
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def client(repo: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def runs(repo: Path, query: str) -> list:
    c = client(repo)
    exp = c.get_experiment_by_name("kdflow")
    return c.search_runs([exp.experiment_id], query, max_results=1000)


def stage_runs(repo: Path, stage: str) -> list:
    return runs(repo, f"tags.`kdflow.stage` = '{stage}'")


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def slow(params: dict) -> dict:
    """The student trained long enough, in small batches, to be stopped mid-training."""
    out = yaml.safe_load(yaml.safe_dump(params))
    out["train"]["student"].update(epochs=40, batch_size=8)
    return out


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not path.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and path.is_file(), f"{path} never appeared"


@pytest.fixture(scope="module")
def params() -> dict:
    p = tiny_params()
    p["tracking"]["log_models"] = False
    p["transfer"].update(source=["distilled"], strategies=["linear_probe"])  # a short pipeline
    return p


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, params: dict) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("states") / "repo", params)
    dvc(repo, "repro", "train@student")  # prepare + student: now in DVC's run cache
    return repo


def test_sigkilled_stage_is_closed_by_the_next_stage(repo: Path, params: dict) -> None:
    (done,) = stage_runs(repo, "train@student")
    first = done.data.tags["mlflow.parentRunId"]  # `dvc repro train@student`: not complete,
    assert client(repo).get_run(first).info.status == "SCHEDULED"  # it awaits the rest
    write_params(repo, slow(params))
    proc = subprocess.Popen(
        [str(BIN / "dvc"), "repro", "train@student"], cwd=repo, env=stage_env(repo),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    ckpt = repo / "checkpoints/student"
    wait_for(ckpt / "last.pt", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage: nothing runs to clean up
    proc.wait()
    (killed,) = [r for r in stage_runs(repo, "train@student") if r.info.run_id != done.info.run_id]
    assert killed.info.status == "RUNNING" and killed.data.tags["kdflow.pid"]
    assert (ckpt / "mlflow_run.json").is_file()

    write_params(repo, params)  # back to the params DVC has a result for
    restored = dvc(repo, "repro", "train@student")
    assert "skipping run" in restored.stdout, restored.stdout  # from the run cache: no script
    assert client(repo).get_run(killed.info.run_id).info.status == "RUNNING"
    dvc(repo, "repro", "train@teacher")  # the next kdflow stage that runs closes it

    run = client(repo).get_run(killed.info.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["kdflow.replaced_by"].startswith(f"run {done.info.run_id} ")
    assert run.data.tags["kdflow.closed_by"].startswith("train@teacher run ")
    assert not ckpt.exists(), "the killed run's stale resume checkpoint was left"
    (parent,) = [r for r in runs(repo, "tags.`kdflow.kind` = 'pipeline'")
                 if r.info.run_id == killed.data.tags["mlflow.parentRunId"]]  # fmt: skip
    assert parent.info.status == "KILLED"  # its dvc was killed too
    (teacher,) = stage_runs(repo, "train@teacher")  # same commit and params: it continued
    assert teacher.data.tags["mlflow.parentRunId"] == first  # the first pipeline run
    assert client(repo).get_run(first).info.status == "SCHEDULED"
    assert not runs(repo, "attributes.status = 'RUNNING' and tags.`kdflow.kind` = 'stage'")


def test_sigterm_ends_the_stage_and_its_pipeline_killed(repo: Path, params: dict) -> None:
    write_params(repo, slow(params))
    try:
        env = stage_env(repo, KDFLOW_PIPELINE_ID="terminated")
        proc = subprocess.Popen(
            [sys.executable, *stage_argv(repo, "stages/train.py", "student")], cwd=repo,
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(repo / "checkpoints/student/last.pt", proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        write_params(repo, params)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]  # after the progress lines: one line, no traceback
    assert last.startswith("kdflow: error: interrupted") and "Traceback" not in err, err[-2000:]
    (run,) = runs(repo, "tags.`kdflow.pipeline_id` = 'terminated' and tags.`kdflow.kind` = 'stage'")
    assert run.info.status == "KILLED"
    parent = client(repo).get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"
    assert (repo / "checkpoints/student/mlflow_run.json").is_file()  # still resumable


def test_failed_pipeline_ends_failed_and_its_rerun_finishes_it(repo: Path) -> None:
    import shutil

    shutil.rmtree(repo / "checkpoints/student", ignore_errors=True)  # SIGTERM test's leftovers
    blocker = repo / "checkpoints/distill"
    blocker.parent.mkdir(exist_ok=True)
    blocker.write_text("a file where distill keeps its resume folder")
    failed = dvc(repo, "repro", ok=False)
    assert failed.returncode != 0 and "a file is in the way" in failed.stderr + failed.stdout
    (distill,) = stage_runs(repo, "distill")
    assert distill.info.status == "FAILED"
    parent_id = distill.data.tags["mlflow.parentRunId"]
    assert client(repo).get_run(parent_id).info.status == "FAILED"

    blocker.unlink()
    dvc(repo, "repro")
    parent = client(repo).get_run(parent_id)
    assert parent.info.status == "FINISHED"  # the same pipeline run, continued
    children = runs(repo, f"tags.`mlflow.parentRunId` = '{parent_id}'")
    by_stage = {}
    for r in children:
        by_stage.setdefault(r.data.tags["kdflow.stage"], []).append(r.info.status)
    assert sorted(by_stage["distill"]) == ["FAILED", "FINISHED"], by_stage
    assert by_stage["evaluate"] == ["FINISHED"]
    assert not runs(repo, "attributes.status = 'RUNNING'")
