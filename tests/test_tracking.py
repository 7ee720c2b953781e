"""MLflow on a real sqlite store: params, per-epoch metrics, tags, registered models."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch

from kdflow.checkpoint import load_model
from kdflow.tasks import load_task
from kdflow.tracking import load_registered


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
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["kdflow.git_dirty"] in (
        "true",
        "false",
    )
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
    logged = load_registered("kdflow-teacher", store)
    local, _ = load_model(pipeline_repo / "models/teacher.pt")
    x = load_task(pipeline_repo / "data/prepared/old")["test"][0][:16]
    with torch.no_grad():
        torch.testing.assert_close(logged(x), local(x))  # a torch.export program
    version = mlflow.MlflowClient().get_model_version_by_alias("kdflow-teacher", "newest")
    assert int(version.version) >= 1


def test_every_stage_registers_its_model(store: str) -> None:
    names = {m.name for m in mlflow.MlflowClient().search_registered_models()}
    expected = {"kdflow-teacher", "kdflow-student", "kdflow-distilled"}
    expected |= {
        f"kdflow-transfer-{s}" for s in ("scratch", "linear_probe", "finetune", "lp_ft", "lwf")
    }
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
    assert any(n.startswith("distill kd T=") for n in names), names
    assert any(
        r.info.run_name.startswith("transfer@lwf from distilled") for r in _runs("transfer@lwf")
    )
