"""MLflow and DVC records that hold: clean lineage (untracked code counts as dirty), one run
tree per pipeline, queued experiments in the repository's store, a copied repository that
leaves its original's artifacts alone, forced re-runs that change no byte, and a local DVC
remote a fresh clone pulls from."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from tests.conftest import BIN, TRANSFER_STAGES, stage_env

STAGES = {"train@teacher", "train@student", "distill", "evaluate"} | TRANSFER_STAGES


def sh(repo: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    tool = str(BIN / args[0]) if (BIN / args[0]).exists() else args[0]
    proc = subprocess.run(
        [tool, *args[1:]], cwd=repo, capture_output=True, text=True, timeout=timeout,
        env=stage_env(repo, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                      GIT_COMMITTER_EMAIL="t@t"),
    )  # fmt: skip
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def client(repo: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def runs(repo: Path, query: str = "") -> list:
    c = client(repo)
    exp = c.get_experiment_by_name("kdflow")
    return c.search_runs([exp.experiment_id], query, max_results=5000)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


@pytest.fixture(scope="module")
def first_pipeline(pipeline_repo: Path) -> tuple:
    """The parent run of the fixture's own `dvc repro` (a clean commit) and its children."""
    parents = runs(pipeline_repo, "tags.`kdflow.kind` = 'pipeline'")
    parent = min(parents, key=lambda r: r.info.start_time)
    children = runs(pipeline_repo, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return parent, children


def test_repro_of_a_clean_commit_is_one_clean_run_tree(first_pipeline: tuple) -> None:
    parent, children = first_pipeline
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("pipeline ")
    assert {r.data.tags["kdflow.stage"] for r in children} == STAGES
    assert len(children) == len(STAGES)
    for r in children:  # DVC rewrote metrics, plots and dvc.lock: none of that is "dirty"
        assert r.data.tags["kdflow.git_dirty"] == "false", r.data.tags.get("kdflow.git_changed")
        assert r.info.status == "FINISHED"
        # what computed it: float results differ by CPU type, so a run names its CPU and torch
        assert r.data.tags["kdflow.cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert r.data.tags["kdflow.torch"] == torch.__version__ and r.data.tags["kdflow.cpu"]
    assert parent.data.params["distill.method"] == "kd"  # the whole params.yaml, for comparing
    # evaluate linked every model's run into the tree, with its final metrics
    links = {k: v for k, v in parent.data.tags.items() if k.startswith("kdflow.stage_run.")}
    assert len(links) == len(STAGES) - 1
    by_id = {r.info.run_id: r for r in children}
    assert all(v in by_id for v in links.values())


def test_downstream_runs_carry_upstream_params_and_output_hashes(
    pipeline_repo: Path, first_pipeline: tuple
) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    _, children = first_pipeline
    lwf = next(r for r in children if r.data.tags["kdflow.stage"] == "transfer@distilled-lwf")
    p = lwf.data.params
    assert p["source.distill.method"] == "kd" and p["source.teacher.model.width"] == "16"
    assert p["transfer.strategy"] == "lwf" and p["transfer.source"] == "distilled"
    from_teacher = next(
        r for r in children if r.data.tags["kdflow.stage"] == "transfer@teacher-lwf"
    )
    assert from_teacher.data.params["transfer.source"] == "teacher"
    assert from_teacher.data.params["source.model.width"] == "16"  # the teacher's own params
    scratch = next(r for r in children if r.data.tags["kdflow.stage"] == "transfer-scratch")
    assert "transfer.source" not in scratch.data.params  # no source: nothing upstream
    assert not any(k.startswith("source.") for k in scratch.data.params)
    lock = yaml.safe_load((pipeline_repo / "dvc.lock").read_text())["stages"]
    want = {o["path"]: o["md5"] for o in lock["distill"]["outs"]}["models/distilled.pt"]
    distill = next(r for r in children if r.data.tags["kdflow.stage"] == "distill")
    assert distill.data.tags["kdflow.output.md5"] == want
    # one name per metric: the per-epoch series, not a second "val.accuracy" summary
    assert "val_accuracy" in distill.data.metrics and "val.accuracy" not in distill.data.metrics


def test_lock_alias_is_the_checked_out_model(pipeline_repo: Path) -> None:
    c = client(pipeline_repo)
    mlflow.set_tracking_uri(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    for role, path in (
        ("distilled", "models/distilled.pt"),
        ("transfer-distilled-lwf", "models/transfer/distilled-lwf.pt"),
        ("transfer-teacher-lwf", "models/transfer/teacher-lwf.pt"),
        ("transfer-scratch", "models/transfer/scratch.pt"),
    ):
        version = c.get_model_version_by_alias(f"kdflow-{role}", "lock")
        assert c.get_run(version.run_id).data.tags["kdflow.output.md5"] == md5(pipeline_repo / path)
    proc = sh(pipeline_repo, "kdflow", "alias", "models/teacher.pt")
    assert "@lock -> kdflow-teacher v" in proc.stdout


def test_lock_model_loads_as_pyfunc_and_serves(pipeline_repo: Path) -> None:
    import time
    import urllib.request

    import numpy as np

    from kdflow.checkpoint import load_model
    from kdflow.tasks import load_task
    from tests.test_reliability import free_port

    uri = f"sqlite:///{pipeline_repo / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    x = load_task(pipeline_repo / "data/prepared/old")["test"][0][:4]
    local, ckpt = load_model(pipeline_repo / "models/distilled.pt")
    want = local(x).detach().numpy()
    info = mlflow.models.get_model_info("models:/kdflow-distilled@lock")
    assert info.metadata["normalization"] == ckpt["normalization"]
    got = mlflow.pyfunc.load_model("models:/kdflow-distilled@lock").predict(x.numpy())
    np.testing.assert_allclose(got, want, atol=1e-5)
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", "models:/kdflow-distilled@lock",
         "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"],
        cwd=pipeline_repo, env=stage_env(pipeline_repo, MLFLOW_TRACKING_URI=uri),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        body = json.dumps({"inputs": x.numpy().tolist()}).encode()
        deadline, answer = time.time() + 90, None
        while time.time() < deadline and answer is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations",
                    body,
                    {"Content-Type": "application/json"},
                )
                answer = json.loads(urllib.request.urlopen(req, timeout=5).read())
            except OSError:
                time.sleep(0.5)
        assert answer is not None, "mlflow models serve did not answer within 90 s"
        np.testing.assert_allclose(np.array(answer["predictions"]), want, atol=1e-4)
    finally:
        import os
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_compare_finds_stages_by_dvc_name(pipeline_repo: Path) -> None:
    stage = "transfer@teacher-lwf"
    proc = sh(pipeline_repo, "kdflow", "compare", "--stage", stage, "--format", "csv")
    lines = proc.stdout.strip().splitlines()
    assert len(lines) >= 2 and stage in lines[1]


def test_dirty_flag_ignores_only_what_dvc_manages(tmp_path: Path, monkeypatch) -> None:
    from kdflow.tracking import git_state

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/m.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / ".gitignore").write_text("*.log\n")
    lock = {
        "stages": {"s": {"params": {"params.yaml": {"a": 1}}, "outs": [{"path": "metrics/m.json"}]}}
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    sh(tmp_path, "git", "init", "-q")
    sh(tmp_path, "git", "add", "-A")
    sh(tmp_path, "git", "commit", "-q", "-m", "c")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    (tmp_path / "metrics/m.json").unlink()  # what DVC does before running a stage
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock) + "# rewritten by dvc\n")
    (tmp_path / "metrics/.gitignore").write_text("/cached.bin\n")  # DVC's, beside an output
    (tmp_path / "run.log").write_text("ignored by .gitignore\n")
    assert git_state() == {"commit": git_state()["commit"], "dirty": "false", "changed": ""}
    (tmp_path / "helper.py").write_text("y = 1\n")  # new code, never committed: it runs too
    assert git_state()["dirty"] == "true" and git_state()["changed"] == "helper.py"
    (tmp_path / "helper.py").unlink()
    (tmp_path / "params.yaml").write_text("a: 2\n")  # -S in an experiment: recorded by DVC
    assert git_state()["dirty"] == "true"
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    assert git_state()["dirty"] == "false"
    (tmp_path / "code.py").write_text("x = 2\n")  # the code that runs differs: dirty
    state = git_state()
    assert state["dirty"] == "true" and state["changed"] == "code.py"


# --------------------------------------------------------- a copy, a remote, experiments


@pytest.fixture(scope="module")
def copy(pipeline_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline repository copied elsewhere (store and artifacts included), committed."""
    dest = tmp_path_factory.mktemp("elsewhere") / "repo"
    shutil.copytree(pipeline_repo, dest, symlinks=True)
    sh(dest, "git", "add", "-A")
    sh(dest, "git", "commit", "-q", "-m", "results")
    return dest


def test_copied_repo_leaves_the_original_artifact_root_alone(
    copy: Path, pipeline_repo: Path
) -> None:
    """The original's artifact root still exists: the copy's store is not rewritten (only a
    moved store whose root is gone is: tests/test_store_safety.py); its runs stay readable."""
    before = hashlib.md5((pipeline_repo / "mlflow.db").read_bytes()).hexdigest()
    sh(copy, "dvc", "repro", "-f", "-s", "transfer@distilled-linear_probe")
    (new,) = runs(copy, "tags.`kdflow.stage` = 'transfer@distilled-linear_probe'")[:1]
    root = (pipeline_repo.resolve() / "mlartifacts").as_uri()
    assert new.info.artifact_uri.startswith(root + "/")
    logged = Path(new.info.artifact_uri.removeprefix("file://"))
    assert (logged / "distilled-linear_probe.json").is_file()
    old = runs(copy, "tags.`kdflow.stage` = 'train@teacher'")[0]  # older runs: not rewritten
    assert old.info.artifact_uri.startswith(root + "/")
    assert not (copy / "mlartifacts/.kdflow-backups").exists()
    assert hashlib.md5((pipeline_repo / "mlflow.db").read_bytes()).hexdigest() == before


def test_forced_rerun_in_another_folder_changes_no_byte(copy: Path) -> None:
    sh(copy, "dvc", "repro", "-f", "-s", "evaluate")  # ONNX + TorchScript exported again
    diff = sh(copy, "dvc", "metrics", "diff", "--json")
    assert json.loads(diff.stdout or "{}") in ({}, {"metrics/evaluate.json": {}}), diff.stdout
    status = sh(copy, "git", "status", "--porcelain")
    assert status.stdout.strip() == "", status.stdout  # metrics, plots, report, dvc.lock
    sh(copy, "dvc", "status", "--quiet")  # models/export matches the committed dvc.lock
    (run,) = runs(copy, "tags.`kdflow.stage` = 'evaluate'")[:1]
    assert run.data.tags["kdflow.git_dirty"] == "false"  # DVC deleted its outputs first: not dirty


def test_local_remote_then_fresh_clone_pulls_clean(copy: Path) -> None:
    sh(copy, "dvc", "push")  # the committed default remote: ../kdflow-dvc-remote
    assert (copy.parent / "kdflow-dvc-remote").is_dir()
    clone = copy.parent / "clone"
    sh(copy.parent, "git", "clone", "-q", str(copy), str(clone))
    sh(clone, "dvc", "pull")
    status = sh(clone, "dvc", "status")
    assert "up to date" in status.stdout, status.stdout
    sh(clone, "dvc", "checkout")
    assert md5(clone / "models/export/distilled.onnx") == md5(copy / "models/export/distilled.onnx")


def test_queued_experiments_land_in_the_repos_store(copy: Path) -> None:
    for name, lam in (("qa", 0.1), ("qb", 0.5)):
        sh(
            copy,
            "dvc",
            "exp",
            "run",
            "--queue",
            "-n",
            name,
            "-S",
            f"++transfer.options.lwf.lambda_old={lam}",  # params.yaml lists only overrides
        )
    sh(copy, "dvc", "exp", "run", "--run-all", timeout=1200)
    assert not list((copy / ".dvc/tmp/exps").glob("**/mlflow.db"))
    rerun = TRANSFER_STAGES  # every transfer depends on transfer.options
    for name, lam in (("qa", 0.1), ("qb", 0.5)):
        found = runs(copy, f"tags.`kdflow.dvc_exp` = '{name}'")
        stages = {r.data.tags["kdflow.stage"] for r in found}
        assert rerun | {"evaluate", "pipeline"} <= stages, (name, stages)
        lwf = next(r for r in found if r.data.tags["kdflow.stage"] == "transfer@distilled-lwf")
        assert float(lwf.data.params["transfer.lambda_old"]) == lam
        assert all(r.data.tags["kdflow.git_dirty"] == "false" for r in found)
        assert all(r.data.tags["kdflow.baseline_commit"] for r in found)
        assert all(r.info.status == "FINISHED" for r in found)
    # kdflow compare puts the two experiments side by side (./params.yaml names the store)
    proc = sh(copy, "kdflow", "compare", "--exp", "qa", "--exp", "qb", "--stage",
              "transfer@distilled-lwf", "--format", "csv")  # fmt: skip
    header, *rows = proc.stdout.strip().splitlines()
    exp_col = header.split(",").index("dvc_exp")
    assert sorted(r.split(",")[exp_col] for r in rows) == ["qa", "qb"], proc.stdout
