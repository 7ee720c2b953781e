"""Reliability: every bad input gets one clear line and damages nothing; kills are survived;
a real MLflow server receives runs and models."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from kdflow.checkpoint import save_model
from kdflow.models import build_model
from tests.conftest import BIN, make_repo, run_stage, stage_argv, stage_env, tiny_params

OUTPUTS = ("models", "metrics", "plots", "data/prepared", "reports")


def snapshot(repo: Path) -> dict[str, str]:
    out = {}
    for top in OUTPUTS:
        for p in sorted((repo / top).rglob("*")) if (repo / top).is_dir() else []:
            if p.is_file():
                out[str(p.relative_to(repo))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ready_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """prepare + teacher + student done, so later stages can be fed bad inputs."""
    params = tiny_params()
    params["tracking"]["log_models"] = False
    repo = make_repo(tmp_path_factory.mktemp("ready") / "repo", params)
    run_stage(repo, "stages/prepare.py")
    run_stage(repo, "stages/train.py", "teacher")
    run_stage(repo, "stages/train.py", "student")
    return repo


def set_param(key: str, value: object) -> Callable[[Path], None]:
    def apply(repo: Path) -> None:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        *path, last = key.split(".")
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    return apply


def truncate_teacher(repo: Path) -> None:
    p = repo / "models/teacher.pt"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def teacher_with_3_classes(repo: Path) -> None:
    model = build_model("cnn", 3, 1, 8, width=16, depth=2)
    meta = {"spec": {"arch": "cnn", "width": 16, "depth": 2}, "num_classes": 3, "in_channels": 1,
            "image_size": 8, "classes": ["a", "b", "c"]}  # fmt: skip
    save_model(repo / "models/teacher.pt", model, meta)


def pickled_module_as_teacher(repo: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), repo / "models/teacher.pt")


def empty_folder(repo: Path) -> None:
    (repo / "imgs").mkdir()
    set_param("data.dataset", "imagefolder")(repo)
    set_param("data.root", str(repo / "imgs"))(repo)


def one_class_folder(repo: Path) -> None:
    from PIL import Image

    (repo / "imgs" / "cat").mkdir(parents=True)
    for i in range(3):
        Image.new("L", (8, 8), color=i * 40).save(repo / "imgs" / "cat" / f"{i}.png")
    set_param("data.dataset", "imagefolder")(repo)
    set_param("data.root", str(repo / "imgs"))(repo)


def unknown_class_name(repo: Path) -> None:
    from PIL import Image

    for name in ("cat", "dog", "eel", "fox"):
        (repo / "imgs" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), color=i * 40).save(repo / "imgs" / name / f"{i}.png")
    set_param("data.dataset", "imagefolder")(repo)
    set_param("data.root", str(repo / "imgs"))(repo)
    set_param("data.old_classes", ["cat", "dog"])(repo)
    set_param("data.new_classes", ["eel", "zebra"])(repo)


def file_in_the_way(repo: Path) -> None:
    shutil.rmtree(repo / "plots")
    (repo / "plots").write_text("not a folder")


def bad_yaml(repo: Path) -> None:
    (repo / "params.yaml").write_text("data:\n  dataset: [digits\n  seed: 0\n")


def no_prepared_data(repo: Path) -> None:
    shutil.rmtree(repo / "data/prepared")


def dead_tracking_server(repo: Path) -> None:
    set_param("tracking.uri", f"http://127.0.0.1:{DEAD_PORT}")(repo)


def diverging_lr(repo: Path) -> None:
    set_param("train.student.lr", 1e30)(repo)
    set_param("train.student.optimizer", "sgd")(repo)
    set_param("train.student.schedule", "constant")(repo)


DEAD_PORT = free_port()
DISTILL, PREPARE = ["stages/distill.py"], ["stages/prepare.py"]
STUDENT = ["stages/train.py", "student"]

# (id, how to break the repo, which stage runs, what the one line must say, exit code)
CASES = [
    ("unknown-key", set_param("data.datset", "digits"), PREPARE, ["unknown key data.datset", "allowed keys"], 2),
    ("wrong-type", set_param("data.shots_per_class", "ten"), PREPARE, ["data.shots_per_class = 'ten'", "integer"], 2),
    ("negative-temperature", set_param("distill.methods", {"kd": {"temperature": -1}}), DISTILL, ["distill.methods.kd.temperature = -1", "greater than 0"], 2),
    ("alpha-out-of-range", set_param("distill.methods", {"kd": {"alpha": 1.5}}), DISTILL, ["distill.methods.kd.alpha = 1.5", "less than or equal to 1"], 2),
    ("unknown-method", set_param("distill.method", "crd"), DISTILL, ["distill.method = 'crd'", "valid: adversarial, at, dist, dkd, fitnet, kd, rkd"], 2),
    ("unknown-arch", set_param("models.student.arch", "resnet9"), STUDENT, ["models.student.arch = 'resnet9'", "resnet8x4"], 2),
    ("unknown-dataset", set_param("data.dataset", "imagenet"), PREPARE, ["data.dataset = 'imagenet'", "fashion_mnist"], 2),
    ("unknown-strategy", set_param("transfer.strategies", ["lwf", "joint"]), ["stages/transfer.py", "distilled-lwf"], ["transfer.strategies", "'joint'", "lp_ft"], 2),
    ("strategy-not-listed", lambda r: None, ["stages/transfer.py", "distilled-magic"], ["unknown transfer strategy 'magic'", "valid:"], 2),
    ("unknown-source", set_param("transfer.source", ["distilled", "techer"]), ["stages/transfer.py", "distilled-lwf"], ["transfer.source = ['distilled', 'techer']", "unknown source 'techer'", "allowed: distilled, teacher, student"], 2),
    ("source-not-listed", set_param("transfer.source", ["distilled"]), ["stages/transfer.py", "teacher-lwf"], ["transfer.source = ['distilled'] does not list 'teacher'"], 2),
    ("scratch-in-strategies", set_param("transfer.strategies", ["scratch", "lwf"]), ["stages/transfer.py", "scratch"], ["transfer.strategies", "lists 'scratch'", "transfer-scratch"], 2),
    ("overlapping-classes", set_param("data.new_classes", [4, 5, 6]), PREPARE, ["overlap on [4]", "disjoint"], 2),
    ("too-many-shots", set_param("data.shots_per_class", 1000), PREPARE, ["data.shots_per_class = 1000 is more than class 5"], 2),
    ("empty-imagefolder", empty_folder, PREPARE, ["no class subfolders with images"], 1),
    ("one-class-imagefolder", one_class_folder, PREPARE, ["one class (cat)", "at least 2"], 1),
    ("unknown-class-name", unknown_class_name, PREPARE, ["data.new_classes", "names classes ['zebra']", "names cat, dog, eel, fox"], 2),
    ("missing-dataset", set_param("data.dataset", "mnist"), PREPARE, ["dataset MNIST not found: looked in", "data.download: true"], 1),
    ("truncated-checkpoint", truncate_teacher, DISTILL, ["teacher models/teacher.pt is corrupt or truncated"], 1),
    ("other-architecture", lambda r: (set_param("distill.init", "student")(r), set_param("models.student.width", 6)(r)), DISTILL,
     ["models/student.pt is a cnn(width=4, depth=2) but params ask for cnn(width=6, depth=2)"], 1),
    ("other-class-count", teacher_with_3_classes, DISTILL, ["has 3 classes but the task has 5"], 1),
    ("missing-teacher", lambda r: (r / "models/teacher.pt").unlink(), DISTILL, ["teacher models/teacher.pt not found", "dvc repro"], 1),
    ("missing-extra-teacher", set_param("distill.extra_teachers", ["models/nope.pt"]), DISTILL, ["models/nope.pt not found"], 1),
    ("pickle-not-plain", pickled_module_as_teacher, DISTILL, ["refused", "weights_only=True"], 1),
    ("dead-tracking-server", dead_tracking_server, STUDENT, [f"http://127.0.0.1:{DEAD_PORT} is not reachable"], 1),
    ("output-dir-is-a-file", file_in_the_way, STUDENT, ["cannot write to plots: a file is in the way"], 1),
    ("diverging-lr", diverging_lr, STUDENT, ["loss became", "at epoch 1, step", "lower the learning rate"], 1),
    ("invalid-yaml", bad_yaml, STUDENT, ["params.yaml: not valid YAML at line"], 2),
    ("no-prepared-data", no_prepared_data, STUDENT, ["prepared task data/prepared/old not found", "run the prepare stage"], 1),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "setup", "argv", "needles", "code"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_one_line_no_damage(
    ready_repo: Path, tmp_path: Path, case: str, setup, argv, needles, code
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ready_repo, repo, symlinks=True)
    setup(repo)
    before = snapshot(repo)
    t0 = time.perf_counter()
    proc = run_stage(repo, *argv, check=False, timeout=120)
    elapsed = time.perf_counter() - t0
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and lines[0].startswith("kdflow: error: ")
    print(f"[{case}] exit {proc.returncode}: {lines[0]}")  # the table in the docs comes from here
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert snapshot(repo) == before, "an output was created or changed"
    if case == "dead-tracking-server":
        assert elapsed < 15


def test_bad_input_table_is_at_least_20() -> None:
    assert len(CASES) >= 20


# ----------------------------------------------------------------------------- interruption


def _slow_params() -> dict:
    params = tiny_params()
    params["tracking"]["log_models"] = False
    params["models"]["teacher"].update(width=48)
    params["models"]["student"].update(width=24)
    for s in (params["train"]["teacher"], params["train"]["student"], params["distill"]["train"]):
        s.update(epochs=5, batch_size=8)
    params["transfer"]["train"].update(epochs=10, batch_size=2)
    return params


def _kill_mid_epoch(repo: Path, argv: list[str], ckpt: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, *stage_argv(repo, *argv)], cwd=repo, env=stage_env(repo),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # into the next epoch
    assert proc.poll() is None, "stage finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _same_result(a: Path, b: Path, model: str, metrics: str) -> None:
    import json

    sa = torch.load(a / model, weights_only=True)["state_dict"]
    sb = torch.load(b / model, weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k

    def strip(m: dict) -> dict:
        return {k: v for k, v in m.items() if k not in ("train_seconds",)}

    assert strip(json.loads((a / metrics).read_text())) == strip(
        json.loads((b / metrics).read_text())
    )


@pytest.fixture(scope="module")
def slow_repos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("kill")
    clean = make_repo(base / "clean", _slow_params())
    run_stage(clean, "stages/prepare.py")
    killed = base / "killed"
    shutil.copytree(clean, killed, symlinks=True)
    return clean, killed


@pytest.mark.parametrize(
    ("argv", "ckpt", "model", "metrics"),
    [
        (["stages/train.py", "teacher"], "checkpoints/teacher/last.pt", "models/teacher.pt", "metrics/teacher.json"),
        (["stages/distill.py"], "checkpoints/distill/last.pt", "models/distilled.pt", "metrics/distill.json"),
        (["stages/transfer.py", "distilled-lwf"], "checkpoints/transfer/distilled-lwf/0/last.pt", "models/transfer/distilled-lwf.pt", "metrics/transfer/distilled-lwf.json"),
        # last: it switches both repositories to the adversarial method (D and its Adam state
        # must come back from the checkpoint)
        (["stages/distill.py"], "checkpoints/distill/last.pt", "models/distilled.pt", "metrics/distill.json"),
    ],
    ids=["train", "distill", "transfer", "distill-adversarial"],
)  # fmt: skip
def test_sigkill_mid_epoch_then_rerun_equals_uninterrupted(
    slow_repos, argv, ckpt, model, metrics, request: pytest.FixtureRequest
) -> None:
    clean, killed = slow_repos
    if request.node.callspec.id == "distill-adversarial":
        for repo in (clean, killed):
            params = yaml.safe_load((repo / "params.yaml").read_text())
            params["distill"]["method"] = "adversarial"
            (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            for out in (model, metrics):
                (repo / out).unlink(missing_ok=True)
    if argv[0] != "stages/train.py":  # later stages need the student and teacher of each repo
        for role in ("student",):
            for repo in (clean, killed):
                if not (repo / f"models/{role}.pt").is_file():
                    run_stage(repo, "stages/train.py", role)
    if argv[0] == "stages/transfer.py":
        for repo in (clean, killed):
            if not (repo / "models/distilled.pt").is_file():
                run_stage(repo, "stages/distill.py")
    run_stage(clean, *argv)
    _kill_mid_epoch(killed, argv, killed / ckpt)
    assert (killed / ckpt).is_file() and not (killed / model).exists()
    (killed / model).parent.mkdir(parents=True, exist_ok=True)
    stale = (killed / model).parent / f".{Path(model).name}.tmp-999999"
    stale.write_bytes(b"half a file")
    if argv[0] == "stages/train.py":  # as a user would: `dvc repro` (which deletes outs first)
        proc = subprocess.run(
            [str(BIN / "dvc"), "repro", "train@teacher"], cwd=killed, capture_output=True,
            text=True, timeout=600, env=stage_env(killed),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        proc.stderr += proc.stdout
    else:
        proc = run_stage(killed, *argv)
    assert "resuming from" in proc.stderr
    assert not stale.exists(), "a killed run's temporary file was left behind"
    assert not (killed / ckpt).exists()
    _same_result(clean, killed, model, metrics)
    adversarial = request.node.callspec.id == "distill-adversarial"
    _one_finished_run(killed, argv, "adversarial" if adversarial else None)


def _one_finished_run(repo: Path, argv: list[str], method: str | None = None) -> None:
    """The killed run was continued: one FINISHED run with every epoch, none left RUNNING
    (``method``: among the distill runs of that method; the repo already has a kd one)."""
    import mlflow

    stage = {"train.py": "train@teacher", "distill.py": "distill"}.get(
        Path(argv[0]).name, f"transfer@{argv[-1]}"
    )
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdflow")
    query = f"tags.`kdflow.stage` = '{stage}'"
    if method:
        query += f" and params.`distill.method` = '{method}'"
    runs = client.search_runs([exp.experiment_id], query)
    assert [r.info.status for r in runs] == ["FINISHED"], [r.info.status for r in runs]
    epochs = _slow_params()["transfer" if "transfer" in stage else "distill"]["train"]["epochs"]
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    assert steps == list(range(epochs)), steps
    assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


# ----------------------------------------------------------------------------- security


def test_no_params_value_is_evaluated_or_imported() -> None:
    from kdflow.errors import ParamsError
    from kdflow.params import parse_params

    src = Path(__file__).resolve().parents[1] / "src" / "kdflow"
    text = "\n".join(p.read_text() for p in src.rglob("*.py"))
    assert "eval(" not in text.replace(".eval(", "").replace("_eval(", "")
    assert "exec(" not in text and "yaml.load(" not in text and "__import__" not in text
    # names from params are looked up in registries, never imported
    for key, value in [("data.dataset", "os.path"), ("models.teacher.arch", "subprocess.Popen"),
                       ("distill.method", "__import__('os').system('true')")]:  # fmt: skip
        section, *rest = key.split(".")
        raw: dict = {section: {}}
        node = raw[section]
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
        with pytest.raises(ParamsError, match="valid"):
            parse_params(raw)
    for p in src.rglob("*.py"):
        for line in p.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{p.name}: {line.strip()}"


def test_ui_binds_loopback_and_sigterm_stops_its_whole_server(tmp_path: Path) -> None:
    """`kdflow ui` serves on 127.0.0.1 only, without MLflow's job runner, and a SIGTERM to
    kdflow leaves no server process and no open port behind."""
    import urllib.request

    import mlflow
    import psutil

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()  # creates the store's tables
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "kdflow"), "ui", "--port", str(port), "--uri", uri], cwd=tmp_path,
        env=stage_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    kids: list[psutil.Process] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"kdflow ui did not answer within 120 s: {proc.communicate()[1][-2000:]}")
        kids = psutil.Process(proc.pid).children(recursive=True)
        assert kids, "kdflow ui started no server process"
        assert not any("huey" in " ".join(k.cmdline()) for k in kids)  # no job runner
        listening = {
            c.laddr.ip
            for k in kids
            for c in k.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {"127.0.0.1"}, listening

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()[-2000:]
        _, alive = psutil.wait_procs(kids, timeout=10)
        assert not alive, [" ".join(k.cmdline())[:120] for k in alive]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:  # a failed test leaves nothing running either
        if proc.poll() is None:
            kids = kids or psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
        for k in kids:
            with contextlib.suppress(psutil.Error):
                k.kill()
        proc.wait(timeout=30)


# ----------------------------------------------------------------------------- MLflow server


def test_stage_against_a_real_mlflow_server(tmp_path: Path, ready_repo: Path) -> None:
    import mlflow

    port = free_port()
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{server_dir / 'db.sqlite'}",
         "--artifacts-destination", str(server_dir / "artifacts")],
        cwd=server_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        import urllib.request

        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("mlflow server did not start within 60 s")
        repo = tmp_path / "repo"
        shutil.copytree(ready_repo, repo, symlinks=True)
        set_param("tracking.log_models", True)(repo)
        uri = f"http://127.0.0.1:{port}"
        run_stage(repo, "stages/train.py", "student", MLFLOW_TRACKING_URI=uri)
        client = mlflow.MlflowClient(uri)
        runs = client.search_runs(
            [client.get_experiment_by_name("kdflow").experiment_id],
            filter_string="tags.`kdflow.stage` = 'train@student'",
        )
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert runs[0].data.metrics["test.accuracy"] > 0.3
        version = client.get_model_version_by_alias("kdflow-student", "newest")
        assert version.run_id == runs[0].info.run_id
        # the team path: artifacts go through the server into its artifact store
        assert runs[0].info.artifact_uri.startswith("mlflow-artifacts:")
        assert list((server_dir / "artifacts").rglob("MLmodel"))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
