"""Evaluation, report, export and `kdflow compare` on small real data (scikit-learn digits).

Reference numbers (ECE, FLOPs) are computed by hand in plain Python, not with the helpers
under test.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from kdflow import cost, export, quality, report
from kdflow.checkpoint import load_model, model_meta, save_model
from kdflow.config import DataConfig, TrackingConfig, TrainConfig
from kdflow.metrics import predict
from kdflow.models import build_model
from kdflow.seed import seed_everything
from kdflow.tasks import Task, load_task, prepare
from kdflow.trainer import Trainer
from kdflow.transfer import TransferNet

ROOT = Path(__file__).resolve().parents[1]
SPEC_T = {"arch": "cnn", "width": 8, "depth": 2}
SPEC_S = {"arch": "cnn", "width": 4, "depth": 2}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """Tiny models run fastest on one thread, and a busy machine cannot oversubscribe it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval_digits")
    cfg = DataConfig(
        dataset="digits",
        old_classes=[0, 1, 2, 3, 4],
        new_classes=[5, 6, 7, 8, 9],
        shots_per_class=20,
    )
    prepare(cfg, out)
    return out


def _train(task: Task, spec: dict, epochs: int) -> nn.Module:
    seed_everything(0)
    model = build_model(spec["arch"], task.num_classes, 1, 8, spec["width"], spec["depth"])
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.01, device="cpu")
    trainer = Trainer(cfg, model, task["train"], task["val"], name="t")
    trainer.fit()
    return trainer.model.eval()


@pytest.fixture(scope="module")
def models(data: Path) -> dict[str, nn.Module]:
    """A briefly trained teacher (width 8) and student (width 4) on the old task."""
    old = load_task(data / "old")
    return {"teacher": _train(old, SPEC_T, 3), "student": _train(old, SPEC_S, 2)}


# ---------------------------------------------------------------- quality


def hand_ece(probs: list[list[float]], labels: list[int], bins: int) -> float:
    """sum over bins of |bin|/n * |accuracy - mean confidence|, bins [k/B, (k+1)/B)."""
    groups: dict[int, list[tuple[float, bool]]] = {}
    for row, y in zip(probs, labels, strict=True):
        conf = max(row)
        pred = row.index(conf)
        b = min(int(conf * bins), bins - 1)
        groups.setdefault(b, []).append((conf, pred == y))
    n = len(labels)
    total = 0.0
    for items in groups.values():
        acc = sum(ok for _, ok in items) / len(items)
        conf = sum(c for c, _ in items) / len(items)
        total += len(items) / n * abs(acc - conf)
    return total


PROBS = [
    [0.92, 0.05, 0.03],  # bin 9, correct
    [0.05, 0.91, 0.04],  # bin 9, wrong
    [0.72, 0.18, 0.10],  # bin 7, correct
    [0.10, 0.15, 0.75],  # bin 7, correct
    [0.35, 0.55, 0.10],  # bin 5, wrong
    [0.44, 0.26, 0.30],  # bin 4, correct
    [0.20, 0.38, 0.42],  # bin 4, wrong
    [0.33, 0.34, 0.33],  # bin 3, correct
]
LABELS = [0, 0, 0, 2, 0, 0, 1, 1]


def test_ece_matches_hand_computation() -> None:
    logits = torch.tensor(PROBS).log()
    y = torch.tensor(LABELS)
    want = hand_ece(PROBS, LABELS, bins=10)
    assert want > 0.05  # a case where calibration is visibly off
    assert quality.expected_calibration_error(logits, y, bins=10) == pytest.approx(want, abs=1e-6)
    # the reliability bins are the same decomposition
    rows = quality.reliability_bins(logits, y, bins=10)
    assert sum(r["count"] for r in rows) == len(LABELS)
    from_bins = sum(
        r["count"] / len(LABELS) * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]
    )
    assert from_bins == pytest.approx(want, abs=1e-6)
    assert [r["count"] for r in rows] == [0, 0, 0, 1, 2, 1, 0, 2, 0, 2]


def test_accuracy_nll_per_class_and_confusion() -> None:
    logits = torch.tensor(PROBS).log()
    y = torch.tensor(LABELS)
    q = quality.quality_metrics(logits, y, bins=10, teacher_logits=logits)
    assert q["accuracy"] == pytest.approx(5 / 8)
    nll = -sum(math.log(p[t]) for p, t in zip(PROBS, LABELS, strict=True)) / len(LABELS)
    assert q["nll"] == pytest.approx(nll, rel=1e-5)
    assert q["agreement"] == 1.0 and q["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
    preds = [row.index(max(row)) for row in PROBS]
    for c, acc in enumerate(quality.per_class_accuracy(logits, y)):
        idx = [i for i, t in enumerate(LABELS) if t == c]
        assert acc == pytest.approx(sum(preds[i] == c for i in idx) / len(idx))
    cm = quality.confusion_matrix(logits, y)
    assert int(cm.sum()) == len(LABELS)
    for t, p in zip(LABELS, preds, strict=True):
        assert cm[t, p] >= 1
    assert int(cm.trace()) == 5


# ---------------------------------------------------------------- cost


def test_flops_match_analytic_count() -> None:
    linear = nn.Linear(20, 7)
    assert cost.flops_per_image(linear, torch.randn(3, 20)) == 2 * 20 * 7
    conv = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)
    )
    # conv: each of 4*8*8 outputs takes 3*3*3 multiply-adds; linear: 256*5; 2 FLOPs per MAC
    want = 2 * (4 * 8 * 8) * (3 * 3 * 3) + 2 * (4 * 8 * 8) * 5
    assert cost.flops_per_image(conv, torch.randn(2, 3, 8, 8)) == want


def test_cost_metrics_and_ratios(models: dict[str, nn.Module], data: Path, tmp_path: Path) -> None:
    x = load_task(data / "old")["test"][0]
    ckpts = {}
    for name, m in models.items():
        ckpts[name] = tmp_path / f"{name}.pt"
        torch.save(m.state_dict(), ckpts[name])
    costs = cost.cost_metrics(models, x, ckpts, repeats=3, throughput_batch=16)
    for name, row in costs.items():
        assert row["params"] == sum(p.numel() for p in models[name].parameters())
        # the weights alone: a checkpoint file also holds metadata (spec, classes, lineage)
        assert row["size_kb"] == pytest.approx(cost.weights_kb(models[name]))
        assert row["size_kb"] < ckpts[name].stat().st_size / 1024
        assert row["size_kb"] > 4 * row["params"] / 1024  # float32 weights, plus the container
        assert row["latency_ms"] > 0 and row["throughput"] > 0
        assert row["threads"] == torch.get_num_threads()
    assert costs["teacher"]["flops"] > costs["student"]["flops"] > 0
    rel = cost.relative_to(costs["teacher"], costs["student"])
    assert rel["compression"] == pytest.approx(
        costs["teacher"]["params"] / costs["student"]["params"]
    )
    assert rel["speedup"] == pytest.approx(
        costs["teacher"]["latency_ms"] / costs["student"]["latency_ms"]
    )


# ---------------------------------------------------------------- export


def test_onnx_and_torchscript_match_pytorch(
    models: dict[str, nn.Module], data: Path, tmp_path: Path
) -> None:
    model = models["student"]
    x = load_task(data / "old")["test"][0]
    path = tmp_path / "export" / "student.onnx"
    exporter = export.export_onnx(model, x[:1], path)
    assert exporter in ("dynamo", "torchscript") and path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left
    # batches of 100 leave a remainder of 26: the batch axis is dynamic
    parity = export.onnx_parity(path, model, x, batch_size=100)
    assert parity["images"] == len(x)
    assert parity["max_abs_diff"] < 1e-4
    assert parity["mismatches"] == 0 and parity["agreement"] == 1.0

    ts = export.export_torchscript(model, x[:2], tmp_path / "export" / "student.ts.pt")
    loaded = torch.jit.load(str(ts))
    with torch.inference_mode():
        assert torch.allclose(loaded(x[:7]), predict(model, x[:7]), atol=1e-5)


# ---------------------------------------------------------------- report


def test_confusion_csv_has_one_row_per_test_image(models: dict[str, nn.Module], data: Path) -> None:
    task = load_task(data / "old")
    x, y = task["test"]
    pred = predict(models["student"], x).argmax(1)
    df = pd.read_csv(io.StringIO(report.confusion_csv(y, pred, task.class_names)), dtype=str)
    assert list(df.columns) == ["actual", "predicted"]
    assert len(df) == len(y)
    assert set(df["actual"]) <= set(task.class_names)
    assert (df["actual"] == df["predicted"]).mean() == pytest.approx(
        float((pred == y).float().mean())
    )


def test_summary_states_compression_and_speedup(models: dict[str, nn.Module], data: Path) -> None:
    task = load_task(data / "old")
    x, y = task["test"]
    nets = {
        "teacher": models["teacher"],
        "student": models["student"],
        "distilled": models["student"],
    }
    costs = cost.cost_metrics(nets, x, repeats=3, throughput_batch=16)
    t_logits = predict(nets["teacher"], x)
    rows = {}
    for name, m in nets.items():
        rows[name] = {**quality.quality_metrics(predict(m, x), y, 10, t_logits), **costs[name]}
    for name in rows:
        rows[name].update(cost.relative_to(rows["teacher"], rows[name]))
    timing = {"threads": torch.get_num_threads(), "latency_repeats": 3, "throughput_batch": 16}
    text = report.render_summary(
        old_rows=rows,
        class_names=task.class_names,
        new_task={
            "scratch": {"accuracy": 0.5, "ece": 0.1, "nll": 1.0},
            "lwf": {"accuracy": 0.7, "ece": 0.05, "nll": 0.8},
        },
        retention={
            "scratch": {"old_task_accuracy": None, "retention": None, "old_task_drop": None},
            "lwf": {"old_task_accuracy": 0.9, "retention": 0.95, "old_task_drop": 0.05},
        },
        onnx={"max_abs_diff": 1e-6, "agreement": 1.0, "mismatches": 0, "images": len(x)},
        timing=timing,
    )
    ratio = rows["distilled"]["compression"]
    assert ratio == pytest.approx(
        sum(p.numel() for p in models["teacher"].parameters())
        / sum(p.numel() for p in models["student"].parameters())
    )
    assert f"{ratio:.1f}× fewer parameters" in text
    assert f"{rows['distilled']['speedup']:.2f}× faster" in text
    assert f"{timing['threads']} CPU thread(s)" in text
    assert "| scratch" in text and "—" in text.split("| scratch", 1)[1].splitlines()[0]
    assert "pass (threshold 1e-4)" in text


# ---------------------------------------------------------------- the stage, end to end


def _write_models(repo: Path, data: Path, models: dict[str, nn.Module]) -> None:
    old, new = load_task(data / "old"), load_task(data / "new")
    specs = {"teacher": SPEC_T, "student": SPEC_S, "distilled": SPEC_S}
    for role, spec in specs.items():
        net = models["teacher" if role == "teacher" else "student"]
        save_model(repo / f"models/{role}.pt", net, model_meta(spec, old, role=role))
    # the scratch baseline (no source), and linear_probe from the distilled student and teacher
    for name, source in (("scratch", None), ("distilled-linear_probe", "distilled"),
                         ("teacher-linear_probe", "teacher")):  # fmt: skip
        net, ckpt = load_model(repo / f"models/{source or 'student'}.pt")
        meta = model_meta(
            {**ckpt["spec"], "kind": "transfer", "new_classes": new.num_classes},
            old,
            strategy=name.rsplit("-", 1)[-1],
            source=source,
            from_scratch=source is None,
        )
        save_model(repo / f"models/transfer/{name}.pt", TransferNet(net, new.num_classes), meta)
    (repo / "plots").mkdir()
    (repo / "plots/teacher.csv").write_text(
        "epoch,train_loss,train_accuracy,val_accuracy\n1,1.2,0.6,0.7\n2,0.5,0.9,0.92\n"
    )


def test_evaluate_stage_end_to_end(
    models: dict[str, nn.Module], data: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    _write_models(repo, data, models)
    params = {
        "data": {"dataset": "digits", "shots_per_class": 20},
        "transfer": {"strategies": ["linear_probe"], "source": ["distilled", "teacher"]},
        "evaluate": {"ece_bins": 10, "latency_repeats": 3, "throughput_batch": 32, "threads": 1},
        "tracking": {
            "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment": "eval-test",
            "log_models": False,
        },
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["--params", "params.yaml", "--old", str(data / "old"), "--new", str(data / "new")]
    argv += [a for role in ("teacher", "student", "distilled")
             for a in ("--model", f"{role}=models/{role}.pt")]  # fmt: skip
    argv += [a for name in ("teacher", "student", "distill")
             for a in ("--curve", f"{name}=plots/{name}.csv")]  # fmt: skip
    argv += ["--transfer-model", "models/transfer/{source}-{strategy}.pt",
             "--scratch-model", "models/transfer/scratch.pt",
             "--transfer-curve", "plots/transfer/{source}-{strategy}.csv",
             "--scratch-curve", "plots/transfer/scratch.csv",
             "--metrics", "metrics/evaluate.json"]  # fmt: skip
    argv += ["--reports", "reports", "--export", "models/export", "--timings", "timings"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "evaluate.py"), *argv],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(m["old_task"]) == {"teacher", "student", "distilled"}
    d = m["old_task"]["distilled"]
    for key in (
        "accuracy",
        "nll",
        "ece",
        "agreement",
        "params",
        "compression",
        "flops",
        "size_kb",
    ):
        assert isinstance(d[key], (int, float)), key
    # timings vary run to run: they live outside the DVC-versioned files
    assert not ({"latency_ms", "throughput", "speedup"} & set(d))
    assert "timing" not in m
    t = json.loads((repo / "timings/evaluate.json").read_text())
    for key in ("latency_ms", "throughput", "speedup", "throughput_ratio"):
        assert isinstance(t["old_task"]["distilled"][key], (int, float)), key
    assert t["timing"]["threads"] == 1 and (repo / "timings/accuracy_vs_latency.png").is_file()
    assert "faster" in (repo / "timings/evaluate.md").read_text()
    assert d["agreement"] == pytest.approx(m["old_task"]["student"]["agreement"])
    assert m["transfer"]["scratch"]["old_task_accuracy"] is None
    assert m["transfer"]["linear_probe"]["old_task_accuracy"] == pytest.approx(d["accuracy"])
    assert set(m["new_task"]) == {"scratch", "linear_probe"}
    assert m["onnx"]["max_abs_diff"] < 1e-4 and m["onnx"]["mismatches"] == 0
    assert (repo / "models/export/distilled.onnx").is_file()
    assert (repo / "models/export/distilled.ts.pt").is_file()
    plots = repo / "reports/plots"
    for name in (
        "confusion_teacher.png",
        "confusion_distilled.png",
        "reliability.png",
        "learning_curves.png",
        "reliability.csv",
    ):
        assert (plots / name).is_file(), name
    assert len(list(plots.glob("confusion_transfer_*.png"))) == 1
    conf = pd.read_csv(plots / "confusion_distilled.csv")
    assert len(conf) == len(load_task(data / "old")["test"][1])
    rel = pd.read_csv(plots / "reliability.csv")
    assert set(rel["model"]) == {"teacher", "student", "distilled"}
    summary = (repo / "reports/summary.md").read_text()
    assert f"{d['compression']:.1f}× fewer parameters" in summary
    # the source table: linear_probe from each source, paired on the same new-task images
    row = m["transfer_sources"]["linear_probe"]
    assert set(row) == {"distilled", "teacher", "distilled_vs_teacher"}
    assert row["distilled"]["new_task_accuracy"] == m["new_task"]["linear_probe"]["accuracy"]
    assert row["distilled"]["old_task_accuracy"] == pytest.approx(d["accuracy"])  # untouched
    assert row["teacher"]["old_task_accuracy"] == pytest.approx(
        m["old_task"]["teacher"]["accuracy"]
    )
    assert row["teacher"]["retention"] == pytest.approx(1.0)
    test = row["distilled_vs_teacher"]
    assert test["accuracy_a"] == pytest.approx(row["distilled"]["new_task_accuracy"])
    assert test["accuracy_b"] == pytest.approx(row["teacher"]["new_task_accuracy"])
    assert 0 <= test["mcnemar_p"] <= 1
    line = next(x for x in summary.splitlines() if x.startswith("| linear_probe") and "(" in x)
    assert f"{test['difference'] * 100:+.2f}" in line and f"{test['mcnemar_p']:.3g}" in line
    assert "new-task accuracy: teacher" in summary


def test_evaluate_refuses_a_transfer_from_another_source(
    models: dict[str, nn.Module], data: Path, tmp_path: Path
) -> None:
    from kdflow.errors import KdflowError
    from kdflow.evaluate import evaluate_transfers
    from kdflow.pipeline.evaluate import EvaluatePaths

    _write_models(tmp_path, data, models)
    old, new = load_task(data / "old"), load_task(data / "new")
    folder = tmp_path / "models/transfer"
    wrong = {"a": folder / "distilled-linear_probe.pt", "b": folder / "teacher-linear_probe.pt"}
    with pytest.raises(KdflowError, match="carried from the teacher, not the distilled"):
        evaluate_transfers(wrong, new, old, 0.9, 10, source="distilled")
    paths = EvaluatePaths({}, "models/transfer/{strategy}.pt", Path("s.pt"), {}, "{strategy}",
                          Path("s.csv"), Path("m"), Path("r"), Path("e"), Path("t"))  # fmt: skip
    with pytest.raises(KdflowError, match=r"has no \{source\}"):
        paths.transfers(["distilled", "teacher"], ["lwf"])
    one = paths.transfers(["distilled"], ["lwf"])  # one source: the older pattern still reads
    assert one == {"distilled": {"lwf": Path("models/transfer/lwf.pt")}}


# ---------------------------------------------------------------- kdflow compare

BASELINE = "ba5e" * 10  # a DVC experiment's baseline commit


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A real sqlite MLflow store with two distill runs (DVC experiments exp-a, exp-b) and one
    train run, all at the commit of a fresh git repository; returns (uri, commit)."""
    import os

    from kdflow.tracking import Tracker

    base = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "c"]):
        subprocess.run(["git", *cmd], cwd=base, check=True, env={**os.environ, **env})
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=base, capture_output=True, text=True, check=True
    ).stdout.strip()
    cfg = TrackingConfig(uri=uri, experiment="cmp", log_models=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        for var in ("KDFLOW_PIPELINE_ID", "DVC_STAGE"):
            mp.delenv(var, raising=False)
        for stage, temp, acc, agree, exp in [
            ("distill", 2.0, 0.81, 0.90, "exp-a"),
            ("distill", 8.0, 0.87, 0.95, "exp-b"),
            ("train@student", None, 0.79, None, None),
        ]:
            for var, value in (("DVC_EXP_NAME", exp), ("DVC_EXP_BASELINE_REV", BASELINE)):
                if exp == "exp-a" or (exp and var == "DVC_EXP_NAME"):
                    mp.setenv(var, value)
                else:
                    mp.delenv(var, raising=False)
            params = {"distill.temperature": temp} if temp else {"model.arch": "cnn"}
            with Tracker(cfg, stage, params) as t:
                t.log_metrics({"test.accuracy": acc, "test.agreement": agree})
    return uri, commit


def _compare(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    from kdflow.cli import main

    main(["compare", *args])
    return capsys.readouterr().out


def _csv(capsys: pytest.CaptureFixture[str], *args: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(_compare(capsys, *args, "--format", "csv")))


def test_compare_sorts_by_metric_and_csv_parses(
    store: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    uri, _ = store
    df = _csv(capsys, "--uri", uri, "--sort", "test.accuracy")
    assert list(df["test.accuracy"]) == [0.87, 0.81, 0.79]
    assert {"run", "start", "stage", "pipeline", "commit", "test.agreement"} <= set(df.columns)
    assert list(df["stage"]) == ["distill", "distill", "train@student"]
    assert df["distill.temperature"].tolist()[:2] == [8.0, 2.0]
    assert df["run"].str.len().eq(8).all()

    df = _csv(
        capsys, "--uri", uri, "--mlflow-experiment", "cmp", "--stage", "distill",
        "--sort", "test.agreement", "--ascending",
    )  # fmt: skip
    assert list(df["test.agreement"]) == [0.90, 0.95]

    out = _compare(capsys, "--uri", uri, "--sort", "test.accuracy", "--limit", "1")
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert len(lines) == 3 and "0.8700" in lines[2]  # header, rule, one row


def test_compare_filters_by_dvc_experiment_commit_and_pipeline(
    store: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    uri, commit = store
    df = _csv(capsys, "--uri", uri, "--exp", "exp-a", "--exp", "exp-b")
    assert sorted(df["dvc_exp"]) == ["exp-a", "exp-b"]
    # a commit matches a run's own commit or its experiment's baseline
    assert len(_csv(capsys, "--uri", uri, "--commit", commit[:8])) == 3
    df = _csv(capsys, "--uri", uri, "--commit", BASELINE[:10].upper())
    assert list(df["dvc_exp"]) == ["exp-a"]
    df = _csv(capsys, "--uri", uri, "--exp", "exp-b", "--commit", commit[:8], "--stage", "distill")
    assert list(df["test.accuracy"]) == [0.87]
    pipeline = df["pipeline"][0]
    df = _csv(capsys, "--uri", uri, "--pipeline-id", pipeline)
    assert list(df["pipeline"]) == [pipeline] and list(df["dvc_exp"]) == ["exp-b"]


def test_the_store_comes_from_params_unless_uri_is_given(
    store: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kdflow.cli import main

    uri, _ = store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tracking": {"uri": uri}}))
    assert len(_csv(capsys, "--stage", "distill")) == 2  # ./params.yaml's tracking.uri
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"tracking": {"uri": f"sqlite:///{tmp_path / 'no.db'}"}}))
    with pytest.raises(SystemExit):
        main(["compare", "--params", str(other)])
    assert "no MLflow store at" in capsys.readouterr().err
    assert len(_csv(capsys, "--params", str(other), "--uri", uri)) == 3  # --uri wins


def test_params_command_prints_every_resolved_param(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kdflow.cli import main
    from kdflow.params import load_params

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("tracking:\n  experiment: other\n")
    main(["params"])
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["tracking"] == {
        "uri": None, "experiment": "other", "log_models": True, "register_models": True,
        "system_metrics": False,
    }  # fmt: skip
    assert shown == load_params(tmp_path / "params.yaml").model_dump(mode="json")
    assert {"data", "models", "train", "distill", "transfer"} <= set(shown)
    with pytest.raises(SystemExit) as exc:
        main(["params", "--params", "missing.yaml"])
    assert exc.value.code == 2 and "missing.yaml" in capsys.readouterr().err


def test_cli_errors_are_one_line(
    store: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kdflow.cli import main

    uri, _ = store
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    cases = [
        (["compare", "--uri", uri, "--sort", "no.such.metric"], "unknown sort metric"),
        (["compare", "--uri", uri, "--stage", "nope"], "no runs found at"),
        (
            ["compare", "--uri", uri, "--exp", "nope", "--stage", "distill"],
            "DVC experiment(s) nope",
        ),
        (["compare", "--uri", uri, "--commit", "HEAD~1"], "is not a commit id"),
        (["compare", "--uri", uri, "--stage", 'it\'s "x"'], "both kinds of quote"),
        (["compare", "--uri", missing], "no MLflow store"),
        (["compare", "--uri", "http://127.0.0.1:9"], "not reachable"),
        (["alias", "--uri", missing, "x.pt"], "no MLflow store"),
        (["ui", "--uri", missing], "no MLflow store"),
        (["ui", "--uri", "http://127.0.0.1:9"], "is a server already"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (args, err)
    assert not (tmp_path / "missing.db").exists()  # no empty store was created
