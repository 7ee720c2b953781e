"""Tracking that cannot hurt: a store is relocated only when kdflow made its artifact root and
that root is gone (a shared or still-existing root is never rewritten, and a backup comes
first); models are loaded without unpickling anything, whatever the environment allows."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from tests.conftest import make_repo, run_stage, tiny_params


def _location(db: Path, name: str) -> str:
    with sqlite3.connect(db) as con:
        return con.execute(
            "SELECT artifact_location FROM experiments WHERE name = ?", (name,)
        ).fetchone()[0]


def _store(folder: Path, shared: Path, gone: Path) -> dict[str, str]:
    """A repository's store as kdflow makes it, with an experiment on a shared root (not
    kdflow's) and one whose root, not kdflow's either, no longer exists; a run in each."""
    from kdflow.tracking.experiment import experiment_id

    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    c = mlflow.MlflowClient(uri)
    ids = {
        "kdflow": experiment_id(uri, "kdflow"),
        "team": c.create_experiment("team", shared.as_uri()),
        "lost": c.create_experiment("lost", gone.as_uri()),
    }
    runs = {}
    for name, exp in ids.items():
        run = c.create_run(exp)
        if name != "lost":
            c.log_text(run.info.run_id, f"note of {name}", "note.txt")
        c.set_terminated(run.info.run_id)
        runs[name] = run.info.run_id
    return runs


def test_relocation_only_of_a_root_kdflow_made_that_is_gone(tmp_path: Path) -> None:
    from kdflow.tracking.store import relocate_store

    shared = tmp_path / "team/mlartifacts"  # the shape the old rule rewrote (".../mlartifacts")
    gone = tmp_path / "gone/mlartifacts"
    runs = _store(tmp_path / "a/repo", shared, gone)
    team_before = _location(tmp_path / "a/repo/mlflow.db", "team")

    copy = tmp_path / "copy/repo"  # a copy: the original root exists, so nothing moves
    shutil.copytree(tmp_path / "a/repo", copy)
    assert relocate_store(copy / "mlflow.db") == 0
    assert _location(copy / "mlflow.db", "kdflow") == (tmp_path / "a/repo/mlartifacts").as_uri()
    assert not (copy / "mlartifacts/.kdflow-backups").exists()

    moved = tmp_path / "b/repo"  # a move: kdflow's root is gone with the old folder
    moved.parent.mkdir()
    (tmp_path / "a/repo").rename(moved)
    db = moved / "mlflow.db"
    assert relocate_store(db) > 0
    assert _location(db, "kdflow") == (moved / "mlartifacts").as_uri()
    assert _location(db, "team") == team_before == shared.as_uri()  # not kdflow's: untouched
    assert _location(db, "lost") == gone.as_uri()  # gone, but not kdflow's: untouched
    uri = f"sqlite:///{db}"
    mlflow.set_tracking_uri(uri)
    assert mlflow.artifacts.load_text(f"runs:/{runs['kdflow']}/note.txt") == "note of kdflow"
    assert mlflow.artifacts.load_text(f"runs:/{runs['team']}/note.txt") == "note of team"
    tag = mlflow.MlflowClient(uri).get_experiment_by_name("kdflow").tags
    assert tag["kdflow.created_artifact_root"] == (moved / "mlartifacts").as_uri()
    (backup,) = (moved / "mlartifacts/.kdflow-backups").glob("*.db")
    assert _location(backup, "kdflow") == (tmp_path / "a/repo/mlartifacts").as_uri()
    assert relocate_store(db) == 0  # once moved, nothing more to do


@pytest.mark.slow
def test_a_stage_leaves_a_shared_artifact_root_untouched(tmp_path: Path) -> None:
    params = tiny_params()
    params["tracking"]["log_models"] = False
    repo = make_repo(tmp_path / "repo", params)
    shared = tmp_path / "shared/mlartifacts"  # outside the repository, someone else's
    shared.mkdir(parents=True)
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("kdflow", shared.as_uri())
    run_stage(repo, "stages/prepare.py")
    run_stage(repo, "stages/train.py", "student")
    assert _location(repo / "mlflow.db", "kdflow") == shared.as_uri()
    tags = mlflow.MlflowClient(uri).get_experiment_by_name("kdflow").tags
    assert not {"kdflow.created_artifact_root", "mlflow.experimentKind"} & set(tags)  # not ours
    (run,) = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("kdflow").experiment_id]
    )
    assert run.info.artifact_uri.startswith(shared.as_uri() + "/")
    assert (Path(run.info.artifact_uri.removeprefix("file://")) / "student.json").is_file()
    assert not (repo / "mlartifacts").exists()


class Payload(torch.nn.Module):
    """A model whose unpickling runs code: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)
        self.lin = torch.nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)

    def __reduce__(self):  # what torch.save / pickle records: "call Path.touch(marker)"
        return (Path.touch, (Path(self.marker),))


@pytest.mark.slow
def test_a_pickled_model_as_weights_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    import mlflow.pytorch

    params = tiny_params()
    params["tracking"]["log_models"] = False
    repo = make_repo(tmp_path / "repo", params)
    run_stage(repo, "stages/prepare.py")
    marker = tmp_path / "PAYLOAD-RAN"
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.MlflowClient().create_experiment("elsewhere", (tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=exp):
        mlflow.pytorch.log_model(Payload(marker), name="m", serialization_format="pickle",
                                 registered_model_name="evil", pip_requirements=["torch"])  # fmt: skip
    assert not marker.exists()
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["models"]["teacher"].update(weights="models:/evil/1", fine_tune=False)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    # even a user who allows MLflow to unpickle does not get it from kdflow
    proc = run_stage(repo, "stages/train.py", "teacher", check=False,
                     MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true")  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "models:/evil/1" in lines[0] and "never unpickles" in lines[0], lines
    assert not marker.exists(), "the pickle payload ran"
    assert not (repo / "models/teacher.pt").exists() and not (repo / "metrics").exists()
    assert mlflow.MlflowClient().get_experiment_by_name("kdflow") is None  # no run at all


def test_kdflow_loads_its_logged_weights_without_torch_export(
    tmp_path: Path, digits_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdflow.checkpoint import model_meta, save_model
    from kdflow.config import TrackingConfig
    from kdflow.models import build_for_task
    from kdflow.tasks import load_task
    from kdflow.tracking import Tracker, load_logged_weights

    monkeypatch.chdir(tmp_path)
    for var in ("KDFLOW_PIPELINE_ID", "DVC_STAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    task = load_task(digits_dir / "old")
    spec = {"arch": "cnn", "width": 4, "depth": 2}
    model = build_for_task(spec, task)
    save_model(tmp_path / "m.pt", model, model_meta(spec, task))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker(TrackingConfig(uri=uri), "train@student", {}) as t:
        t.log_model(model, "kdflow-student", task["test"][0][:1], {"spec": spec}, tmp_path / "m.pt")

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("torch.export.load was called: pt2 unpickles its weights")

    monkeypatch.setattr(torch.export, "load", refuse)
    state, meta, resolved = load_logged_weights("models:/kdflow-student/1", uri)
    assert resolved.startswith("kdflow-student/1 ") and meta["spec"] == spec
    assert meta["data_hash"] == task.content_hash  # the checkpoint's own metadata
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
