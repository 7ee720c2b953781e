"""Promotion that needs evidence: ``models:/kdflow-distilled@champion`` moves to a new version
only when there is no champion yet, or when the new one is better on the same test images
with McNemar p < 0.05; the decision is logged and said in one line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch

from tests.conftest import BIN, stage_env


@pytest.fixture(scope="module")
def setting(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store, the digits task, and an untrained and a trained student of it."""
    from kdflow.models import build_for_task
    from kdflow.tasks import load_task

    task = load_task(digits_dir / "old")
    spec = {"arch": "cnn", "width": 8, "depth": 2}
    torch.manual_seed(0)
    weak, strong = build_for_task(spec, task), build_for_task(spec, task)
    x, y = task["train"][0][: len(task["train"][1])], task["train"][1]
    opt = torch.optim.Adam(strong.parameters(), lr=0.01)
    for _ in range(60):  # full-batch steps: enough to be far better than chance
        opt.zero_grad()
        torch.nn.functional.cross_entropy(strong(x), y).backward()
        opt.step()
    base = tmp_path_factory.mktemp("champion")
    return {"task": task, "spec": spec, "weak": weak.eval(), "strong": strong.eval(),
            "uri": f"sqlite:///{base / 'mlflow.db'}", "base": base, "n": 0}  # fmt: skip


def log_version(s: dict, which: str, data_hash: str | None = None) -> tuple[Path, torch.Tensor]:
    """Log ``which`` model as a new kdflow-distilled version, as the distill stage does."""
    from kdflow.checkpoint import model_meta, save_model
    from kdflow.config import TrackingConfig
    from kdflow.metrics import predict
    from kdflow.tracking import Tracker

    task, model = s["task"], s[which]
    s["n"] += 1
    path = s["base"] / f"distilled-{s['n']}.pt"
    meta = model_meta(s["spec"], task)
    if data_hash:
        meta["data_hash"] = data_hash
    save_model(path, model, meta)
    cfg = TrackingConfig(uri=s["uri"], experiment="champion")
    with Tracker(cfg, "distill", {"which": which}) as t:
        t.set_output(path)
        t.log_model(model, "kdflow-distilled", task["test"][0][:1], {"spec": s["spec"]}, path)
    return path, predict(model, task["test"][0]).argmax(1)


def champion_version(uri: str) -> str:
    client = mlflow.MlflowClient(uri)
    return str(client.get_model_version_by_alias("kdflow-distilled", "champion").version)


@pytest.fixture(autouse=True)
def _no_pipeline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("KDFLOW_PIPELINE_ID", "DVC_STAGE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)


def test_champion_moves_only_on_evidence(setting: dict) -> None:
    from kdflow.tracking import promote

    s, uri = setting, setting["uri"]
    test, data_hash = s["task"]["test"], s["task"].content_hash

    def decide(which: str) -> object:
        path, pred = log_version(s, which)
        return promote(uri, path, pred, test, data_hash)

    first = decide("weak")  # no champion yet: the first version is it
    assert first.promoted and champion_version(uri) == first.champion == "1"
    assert "no champion yet" in first.line()
    same = decide("weak")  # the same weights again (v2): no evidence, no move
    assert not same.promoted and champion_version(uri) == "1" and same.p == 1.0
    assert same.line().startswith("champion stays kdflow-distilled v1: v2 is not better")
    better = decide("strong")  # far better on the same test images: moves
    assert better.promoted and champion_version(uri) == "3" and better.p < 0.05
    assert better.candidate_accuracy > better.champion_accuracy
    worse = decide("weak")  # significantly worse: stays
    assert not worse.promoted and champion_version(uri) == "3" and worse.p < 0.05
    run = mlflow.MlflowClient(uri).get_model_version("kdflow-distilled", "3").run_id
    logged = mlflow.MlflowClient(uri).get_run(run).data  # the decision, on the run it is about
    assert logged.tags["kdflow.champion.decision"] == "promoted"
    assert logged.metrics["champion.mcnemar_p"] == better.p


def test_a_champion_of_other_data_is_not_compared(setting: dict) -> None:
    from kdflow.tracking import promote

    s = {**setting, "uri": f"sqlite:///{setting['base'] / 'other.db'}"}
    test, data_hash = s["task"]["test"], s["task"].content_hash
    path, pred = log_version(s, "weak", data_hash="0" * 64)  # trained on other prepared data
    assert promote(s["uri"], path, pred, test, "0" * 64).promoted
    path, pred = log_version(s, "strong")
    decision = promote(s["uri"], path, pred, test, data_hash)
    assert not decision.promoted and "other prepared data" in decision.reason
    assert champion_version(s["uri"]) == "1"


# ------------------------------------------------------------------- in the pipeline


def test_pipeline_sets_the_champion_and_a_same_params_rerun_keeps_it(
    pipeline_repo: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{pipeline_repo / 'mlflow.db'}"
    first = champion_version(uri)  # the fixture's `dvc repro`: no champion yet, so v1
    parent = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("kdflow").experiment_id],
        "tags.`kdflow.kind` = 'pipeline' and tags.`kdflow.champion.decision` = 'promoted'",
    )
    assert first == "1" and parent, "the first pipeline run did not record its promotion"
    repo = tmp_path / "repo"
    shutil.copytree(pipeline_repo, repo, symlinks=True)
    env = stage_env(repo)
    proc = subprocess.run([str(BIN / "dvc"), "repro", "-f", "-s", "distill", "evaluate"],
                          cwd=repo, capture_output=True, text=True, timeout=900, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    copy_uri = f"sqlite:///{repo / 'mlflow.db'}"
    assert champion_version(copy_uri) == first  # the same params: no evidence, no move
    assert "[evaluate] champion stays kdflow-distilled v1: v2 is not better" in proc.stdout
    cli = subprocess.run([str(BIN / "kdflow"), "promote"], cwd=repo, capture_output=True,
                         text=True, timeout=300, env=env)  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert cli.stdout.startswith("champion stays kdflow-distilled v1: v2 "), cli.stdout
