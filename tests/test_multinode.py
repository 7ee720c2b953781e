"""Two "nodes" on one machine: two torchrun agents, c10d rendezvous on 127.0.0.1, --nnodes 2.

Each node runs the same stage command (docs/scaling.md); global rank 0 writes and logs. Nodes
that do not share the repository's filesystem are refused with one line.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import make_repo, run_stage, stage_argv, stage_env, tiny_params


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _repo(tmp: Path) -> Path:
    params = tiny_params()
    params["train"]["student"].update(epochs=3, select="last")
    params["tracking"]["log_models"] = False
    params["compute"].update(nnodes=2, nproc_per_node=1, rdzv_endpoint=f"127.0.0.1:{_free_port()}",
                             rdzv_timeout=30)  # fmt: skip
    repo = make_repo(tmp / "node0", params)
    run_stage(repo, "stages/prepare.py")
    return repo


def _two_nodes(node0: Path, node1: Path) -> list[subprocess.CompletedProcess]:
    argv = [sys.executable, *stage_argv(node0, "stages/train.py", "student")]
    procs = [subprocess.Popen(argv, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=stage_env(d)) for d in (node0, node1)]  # fmt: skip
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_two_nodes_sharing_the_repository_train_once(tmp_path: Path) -> None:
    import mlflow

    repo = _repo(tmp_path)
    a, b = _two_nodes(repo, repo)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-2000:], b.stderr[-2000:])
    metrics = json.loads((repo / "metrics/student.json").read_text())
    assert metrics["epochs"] == 3 and metrics["test"]["accuracy"] > 0.5
    assert (a.stdout + b.stdout).count("test accuracy") == 1  # global rank 0 alone reports
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdflow")
    runs = client.search_runs([exp.experiment_id], "tags.`kdflow.stage` = 'train@student'")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert not (repo / "checkpoints/student/.kdflow-shared").exists()


def test_nodes_without_a_shared_filesystem_are_refused(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    other = tmp_path / "node1"
    shutil.copytree(repo, other)  # the same files, but not the same filesystem
    a, b = _two_nodes(repo, other)
    assert a.returncode != 0 and b.returncode != 0
    said = [line for line in (a.stderr + b.stderr).splitlines() if "shared by every node" in line]
    assert said, a.stderr[-2000:] + b.stderr[-2000:]
    assert (
        not (repo / "metrics/student.json").exists()
        and not (other / "metrics/student.json").exists()
    )
    assert yaml.safe_load((repo / "params.yaml").read_text())["compute"]["nnodes"] == 2
