"""MLflow on a real sqlite store: params, per-epoch metrics, tags, registered models; where
the store is; which pipeline execution a stage belongs to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
import torch

from kdflow.checkpoint import load_model
from kdflow.tasks import load_task
from tests.conftest import TRANSFERS


@pytest.fixture(scope="module")
def store(pipeline_repo: Path) -> str:
    uri = f"sqlite:///{pipeline_repo / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return uri


def _runs(stage: str):
    return mlflow.search_runs(
        experiment_names=["kdflow"],
        filter_string=f"tags.`kdflow.stage` = '{stage}'",
        output_format="list",
    )


def test_train_run_has_params_epoch_metrics_and_tags(store: str, pipeline_repo: Path) -> None:
    (run,) = _runs("train@teacher")[:1]
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["train.epochs"] == "4" and p["model.arch"] == "cnn" and p["model.width"] == "16"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert run.data.metrics["test.accuracy"] > 0.5
    tags = run.data.tags
    assert len(tags["mlflow.source.git.commit"]) == 40
    # a clean commit; DVC's own outputs (metrics, plots, dvc.lock) are no change
    assert tags["kdflow.git_dirty"] == "false", tags.get("kdflow.git_changed")
    assert "kdflow.git_changed" not in tags
    assert (
        tags["kdflow.input.data_old"] == load_task(pipeline_repo / "data/prepared/old").content_hash
    )
    # one pipeline id shared by the stages of that one `dvc repro`
    ids = {
        r.data.tags["kdflow.pipeline_id"]
        for s in ("train@teacher", "train@student")
        for r in _runs(s)[-1:]
    }
    assert len(ids) == 1


def test_registered_model_loads_back_with_same_outputs(store: str, pipeline_repo: Path) -> None:
    logged = mlflow.pytorch.load_model("models:/kdflow-teacher@newest")
    local, _ = load_model(pipeline_repo / "models/teacher.pt")
    x = load_task(pipeline_repo / "data/prepared/old")["test"][0][:16]
    with torch.no_grad():
        torch.testing.assert_close(logged(x), local(x))  # a torch.export program
    version = mlflow.MlflowClient().get_model_version_by_alias("kdflow-teacher", "newest")
    assert int(version.version) >= 1


def test_every_stage_registers_its_model(store: str) -> None:
    names = {m.name for m in mlflow.MlflowClient().search_registered_models()}
    expected = {"kdflow-teacher", "kdflow-student", "kdflow-distilled"}
    expected |= {f"kdflow-transfer-{t}" for t in ["scratch", *TRANSFERS]}
    assert expected <= names
    run = mlflow.MlflowClient().get_run(_runs("train@student")[0].info.run_id)
    info = mlflow.models.get_model_info("models:/kdflow-student@newest")
    assert info.signature is not None  # logged with a signature: dynamic batch, 1x8x8 images
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 1, 8, 8]
    assert info.run_id == run.info.run_id


def test_default_store_is_the_repositorys_also_from_dvc_experiment_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdflow.config import TrackingConfig
    from kdflow.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = tmp_path / "repo"
    monkeypatch.setenv("DVC_ROOT", str(repo))
    assert tracking_uri(TrackingConfig()) == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    # `dvc exp run --queue/--temp` runs in <repo>/.dvc/tmp/exps/<tmp>/ and deletes it afterwards
    monkeypatch.setenv("DVC_ROOT", str(repo / ".dvc/tmp/exps/tmpab12cd"))
    assert tracking_uri(TrackingConfig()) == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    monkeypatch.delenv("DVC_ROOT")
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracking_uri(TrackingConfig(uri="http://127.0.0.1:5000")) == "http://127.0.0.1:5000"


def test_runs_are_named_for_what_they_are(store: str) -> None:
    names = {r.info.run_name for r in _runs("distill")}
    assert any(n.startswith("distill kd ") and "temperature=" in n for n in names), names
    for stage in ("transfer@distilled-lwf", "transfer@teacher-lwf", "transfer-scratch"):
        assert any(r.info.run_name.startswith(stage) for r in _runs(stage)), stage  # the source


def test_sqlite_store_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kdflow.errors import KdflowError
    from kdflow.tracking.store import artifact_location, default_store, require_store, sqlite_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert sqlite_path("sqlite:////abs/m.db?timeout=9") == Path("/abs/m.db")
    assert sqlite_path("sqlite:///m.db") == Path("m.db")
    assert sqlite_path("sqlite:///:memory:") is None and sqlite_path("http://h:5000") is None
    assert default_store("sqlite:///mlflow.db") == Path("mlflow.db")  # the repository's own
    assert default_store(f"sqlite:///{tmp_path / 'other.db'}") is None
    assert artifact_location("sqlite:///sub/m.db") == (tmp_path / "sub/mlartifacts").as_uri()
    assert artifact_location("http://h:5000") is None
    with pytest.raises(KdflowError, match="no MLflow store at"):
        require_store("sqlite:///mlflow.db")
    (tmp_path / "mlflow.db").touch()
    require_store("sqlite:///mlflow.db")
    require_store("http://h:5000")  # a server: nothing to check on disk


CHILD = "from kdflow.tracking.provenance import pipeline_id; print(pipeline_id())"


def test_pipeline_id_comes_from_the_dvc_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stages started by one `dvc` process share an id (one per DVC experiment); others
    get a fresh one each."""
    from kdflow.tracking.provenance import pipeline_id

    fake = tmp_path / "dvc"  # a process whose command line is `python .../dvc`
    fake.write_text(
        textwrap.dedent(f"""
        import json, os, subprocess, sys
        run = lambda **env: subprocess.run([sys.executable, "-c", {CHILD!r}], check=True,
            capture_output=True, text=True, env={{**os.environ, **env}}).stdout.strip()
        print(json.dumps([run(), run(), run(DVC_EXP_NAME="exp-a")]))
        """)
    )
    env = {k: v for k, v in os.environ.items() if k not in ("KDFLOW_PIPELINE_ID", "DVC_EXP_NAME")}
    out = subprocess.run(
        [sys.executable, str(fake)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    first, second, experiment = json.loads(out.stdout)
    assert first == second and len(first) == 12
    assert experiment != first
    monkeypatch.delenv("KDFLOW_PIPELINE_ID", raising=False)
    assert pipeline_id() != pipeline_id()  # no dvc above pytest: a fresh id each time
    monkeypatch.setenv("KDFLOW_PIPELINE_ID", "given")
    assert pipeline_id() == "given"


def test_process_seconds_counts_from_process_start() -> None:
    code = "import time; time.sleep(1.0); from kdflow.tracking import process_seconds; "
    code += "print(process_seconds())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 1.0 <= float(out.stdout) < 60  # the sleep before the import counts too


def test_experiment_is_for_training_and_runs_list_their_datasets(
    store: str, pipeline_repo: Path
) -> None:
    exp = mlflow.MlflowClient().get_experiment_by_name("kdflow")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # not GenAI
    assert exp.tags["kdflow.created_artifact_root"] == exp.artifact_location
    (run,) = _runs("evaluate")[:1]
    old = load_task(pipeline_repo / "data/prepared/old")
    got = {(i.dataset.name, i.dataset.digest, i.tags[0].value)
           for i in run.inputs.dataset_inputs}  # fmt: skip
    assert ("digits-old-test", f"{old.content_hash[:16]}-test", "test") in got, got
    assert {name for name, _, _ in got} == {"digits-old-test", "digits-new-test"}


def test_training_runs_list_their_datasets(store: str) -> None:
    """Each training stage's run lists the splits it read (the stages pass their tasks)."""
    want = {
        "distill": {("digits-old-train", "training"), ("digits-old-val", "validation"),
                    ("digits-old-test", "test")},
        "transfer@teacher-lwf": {("digits-new-train", "training"), ("digits-new-test", "test"),
                                 ("digits-old-test", "test")},
    }  # fmt: skip
    for stage, expected in want.items():
        (run,) = _runs(stage)[:1]
        got = {(i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs}
        assert got == expected, (stage, got)


def _training_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: object):
    """A TrainingStage of tiny params logging to a fresh sqlite store; returns it and the URI."""
    import yaml

    from kdflow.params import load_params
    from kdflow.pipeline.stage import StagePaths, TrainingStage
    from tests.conftest import tiny_params

    monkeypatch.chdir(tmp_path)
    for var in ("KDFLOW_PIPELINE_ID", "DVC_STAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    raw = tiny_params()
    raw["tracking"].update(uri=f"sqlite:///{tmp_path / 'm.db'}", log_models=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    paths = StagePaths(tmp_path / "m.pt", tmp_path / "m.json", tmp_path / "m.csv", tmp_path / "ck")
    stage = TrainingStage("train@student", params, paths, {}, {}, **kwargs)  # type: ignore[arg-type]
    return stage, raw["tracking"]["uri"]


def test_training_stage_logs_the_datasets_it_is_given(
    tmp_path: Path, digits_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = load_task(digits_dir / "old")
    stage, uri = _training_stage(tmp_path, monkeypatch, datasets=[(task, ("train", "val", "test"))])
    with stage:
        pass
    run = mlflow.MlflowClient(uri).get_run(stage.tracker.run_id)
    got = {(i.dataset.name, i.dataset.digest, i.tags[0].value) for i in run.inputs.dataset_inputs}
    h = task.content_hash[:16]
    assert got == {("digits-old-train", f"{h}-train", "training"),
                   ("digits-old-val", f"{h}-val", "validation"),
                   ("digits-old-test", f"{h}-test", "test")}  # fmt: skip
    assert run.data.tags["kdflow.checkpoints"] == str((tmp_path / "ck").resolve())
    assert run.data.tags["kdflow.output.path"] == str(tmp_path / "m.pt")


def test_a_stage_whose_training_blew_up_tags_its_run(
    tmp_path: Path, digits_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdflow.config import TrainConfig
    from tests.conftest import DIVERGES, mlp

    task = load_task(digits_dir / "old")
    stage, uri = _training_stage(tmp_path, monkeypatch)
    with stage:
        result = stage.fit(TrainConfig(**DIVERGES), mlp(task["train"][0]), task["train"],
                           task["val"])  # fmt: skip
    tags = mlflow.MlflowClient(uri).get_run(stage.tracker.run_id).data.tags
    assert result.diverged and tags["kdflow.diverged"] == result.diverged


@pytest.mark.parametrize("on", [True, False], ids=["on", "off"])
def test_system_metrics_follow_the_param(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on: bool
) -> None:
    import time

    from kdflow.config import TrackingConfig
    from kdflow.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    for var in ("KDFLOW_PIPELINE_ID", "DVC_STAGE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = TrackingConfig(uri=uri, log_models=False, system_metrics=on)
    with Tracker(cfg, "train@student", {}) as t:
        time.sleep(1.5)
    metrics = mlflow.MlflowClient(uri).get_run(t.run_id).data.metrics
    system = [k for k in metrics if k.startswith("system/")]
    assert bool(system) == on, sorted(metrics)
    if on:
        assert "system/cpu_utilization_percentage" in metrics


def test_sigterm_waits_for_the_mlflow_call_it_lands_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broken off inside sqlite, MLflow prints a traceback: the stop comes after the call."""
    import signal

    from kdflow.config import TrackingConfig
    from kdflow.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    for var in ("KDFLOW_PIPELINE_ID", "DVC_STAGE"):
        monkeypatch.delenv(var, raising=False)
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'm.db'}", log_models=False)
    done, before = [], signal.getsignal(signal.SIGTERM)

    def log_then_return(metrics: dict, step: int) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # lands while the call runs
        mlflow.log_metrics(metrics, step=step)
        done.append(step)

    with pytest.raises(KeyboardInterrupt), Tracker(cfg, "train@student", {}) as t:
        t._call("log metrics", log_then_return, {"loss": 1.0}, step=3)
        done.append("after")  # not reached: the stop comes when the call returns
    assert done == [3]
    run = mlflow.MlflowClient(cfg.uri).get_run(t.run_id)
    assert run.info.status == "KILLED" and run.data.metrics["loss"] == 1.0
    assert signal.getsignal(signal.SIGTERM) is before  # the stage's handler was put back
