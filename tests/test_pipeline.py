"""The real pipeline: `dvc repro` end to end on a tiny repository, then what DVC sees."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import BIN, SOURCES, STRATEGIES, TRANSFERS, stage_env


def dvc(repo: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "dvc"), *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=stage_env(repo),
    )


def test_repro_produces_every_output(pipeline_repo: Path) -> None:
    r = pipeline_repo
    for path in [
        "data/prepared/old/manifest.json",
        "data/prepared/new/manifest.json",
        "models/teacher.pt",
        "models/student.pt",
        "models/distilled.pt",
        "metrics/teacher.json",
        "metrics/student.json",
        "metrics/distill.json",
        "plots/teacher.csv",
        "plots/distill.csv",
        "reports/summary.md",
        "metrics/evaluate.json",
    ]:
        assert (r / path).is_file(), path
    for t in ["scratch", *TRANSFERS]:  # one model and metrics file per source and strategy
        assert (r / "models" / "transfer" / f"{t}.pt").is_file(), t
        assert (r / "plots" / "transfer" / f"{t}.csv").is_file(), t
        m = json.loads((r / "metrics" / "transfer" / f"{t}.json").read_text())
        assert 0 <= m["new_task"]["accuracy"] <= 1
        assert (m["old_task"]["accuracy"] is None) == (t == "scratch")
        assert m["source"] == (None if t == "scratch" else t.split("-")[0]), (t, m["source"])
    teacher = json.loads((r / "metrics/teacher.json").read_text())
    assert {"test", "val", "params", "epochs"} <= set(teacher)
    assert "train_seconds" not in teacher  # timings are kept out of DVC-tracked files
    assert "epoch_seconds" not in (r / "plots/teacher.csv").read_text()
    distill = json.loads((r / "metrics/distill.json").read_text())
    assert {"agreement", "kl_to_teacher", "accuracy"} <= set(distill["test"])
    assert len((r / "plots/teacher.csv").read_text().splitlines()) == 1 + 4
    # the linear probe is solved, with its L2 strength chosen by cross-validation
    probe = json.loads((r / "metrics/transfer/distilled-linear_probe.json").read_text())["solved"]
    assert probe["linear_probe"]["cv_folds"] == 5 and probe["linear_probe"]["C"] > 0
    # paired tests on the same test images, in the metrics and in the report
    tests = json.loads((r / "metrics/evaluate.json").read_text())["significance"]
    assert {"distilled_vs_student", "teacher_vs_student", "lwf_vs_scratch"} <= set(tests)
    for t in tests.values():
        assert 0 <= t["mcnemar_p"] <= 1 and t["ci95_low"] <= t["difference"] <= t["ci95_high"]
    summary = (r / "reports/summary.md").read_text()
    assert "McNemar p" in summary and "distilled vs student" in summary


def test_source_table_compares_each_strategy_across_sources(pipeline_repo: Path) -> None:
    """metrics/evaluate.json and the report: each strategy from the distilled student and from
    the teacher, paired-tested on the same new-task images, with each one's retention."""
    r = pipeline_repo
    m = json.loads((r / "metrics/evaluate.json").read_text())
    table = m["transfer_sources"]
    assert set(table) == set(STRATEGIES)
    for strategy, row in table.items():
        assert set(row) == {*SOURCES, "distilled_vs_teacher"}, row
        for src in SOURCES:
            own = json.loads((r / f"metrics/transfer/{src}-{strategy}.json").read_text())
            for key, value in (("new_task_accuracy", own["new_task"]["accuracy"]),
                               ("old_task_accuracy", own["old_task"]["accuracy"]),
                               ("retention", own["old_task"]["retention"])):  # fmt: skip
                assert row[src][key] == pytest.approx(value, rel=1e-5), (strategy, src, key)
        test = row["distilled_vs_teacher"]
        assert test["accuracy_a"] == pytest.approx(row["distilled"]["new_task_accuracy"])
        assert test["accuracy_b"] == pytest.approx(row["teacher"]["new_task_accuracy"])
        assert 0 <= test["mcnemar_p"] <= 1 and test["ci95_low"] <= test["difference"]
    # the per-strategy table is still the first source's (distilled), with scratch
    assert set(m["new_task"]) == {"scratch", *STRATEGIES}
    lwf = json.loads((r / "metrics/transfer/distilled-lwf.json").read_text())
    assert m["new_task"]["lwf"]["accuracy"] == pytest.approx(lwf["new_task"]["accuracy"])
    summary = (r / "reports/summary.md").read_text()
    assert "## Transfer from each source" in summary
    assert "new-task accuracy: teacher" in summary and "McNemar p (distilled vs teacher)" in summary


def test_teacher_change_outdates_only_what_depends_on_the_teacher(pipeline_repo: Path) -> None:
    """A new teacher re-runs train@teacher, distill, every transfer from the teacher or the
    distilled student, and evaluate; transfer-scratch (no source model) stays up to date."""
    path = pipeline_repo / "params.yaml"
    text = path.read_text()
    params = yaml.safe_load(text)
    params["models"]["teacher"]["width"] += 4
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = dvc(pipeline_repo, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert set(json.loads(status.stdout or "{}")) == {"train@teacher"}  # its own params
        # what `dvc repro` would run: the changed stage and everything downstream of it
        dry = dvc(pipeline_repo, "repro", "--dry", "--force-downstream")
        assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    finally:
        path.write_text(text)
    would = {line.split("'")[1] for line in dry.stdout.splitlines() if line.startswith("Running")}
    transfers = {f"transfer@{t}" for t in TRANSFERS}  # from the teacher, or from distill
    assert would == {"train@teacher", "distill", "evaluate"} | transfers, would
    assert "transfer-scratch" not in would and "train@student" not in would


def test_second_repro_has_nothing_to_do(pipeline_repo: Path) -> None:
    proc = dvc(pipeline_repo, "repro")
    assert proc.returncode == 0, proc.stderr
    assert "Running stage" not in proc.stdout
    assert "up to date" in proc.stdout


def test_metrics_show_lists_old_and_new_task_accuracies(pipeline_repo: Path) -> None:
    proc = dvc(pipeline_repo, "metrics", "show", "--json")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "old_task" in text and "new_task" in text and '"accuracy"' in text


def test_shots_change_reruns_prepare_transfer_evaluate_only(pipeline_repo: Path) -> None:
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())
    params["data"]["shots_per_class"] = 10
    (pipeline_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = dvc(pipeline_repo, "status", "--json")
    changed = set(json.loads(status.stdout or "{}"))
    assert "prepare" in changed
    proc = dvc(pipeline_repo, "repro")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ran = {
        line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")
    }
    assert "prepare" in ran and "evaluate" in ran
    assert {"transfer-scratch", "transfer@distilled-lwf", "transfer@teacher-lwf"} <= ran
    assert not ran & {"train@teacher", "train@student", "distill"}, ran
    manifest = json.loads((pipeline_repo / "data/prepared/new/manifest.json").read_text())
    assert set(manifest["per_class"]["train"].values()) == {10}


def test_method_change_reruns_distill_and_downstream_only(pipeline_repo: Path) -> None:
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())
    params["distill"]["method"] = "dkd"
    (pipeline_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = dvc(pipeline_repo, "repro")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ran = {
        line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")
    }
    assert "distill" in ran and "evaluate" in ran
    assert not ran & {"prepare", "train@teacher", "train@student"}, ran
    assert json.loads((pipeline_repo / "metrics/distill.json").read_text())["method"] == "dkd"


def test_label_fraction_reruns_student_distill_and_downstream_only(pipeline_repo: Path) -> None:
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())
    params["train"]["student"]["label_fraction"] = 0.2  # the distilled student's labels too
    (pipeline_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = dvc(pipeline_repo, "repro")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ran = {
        line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")
    }
    assert {"train@student", "distill", "evaluate"} <= ran
    assert not ran & {"prepare", "train@teacher"}, ran
