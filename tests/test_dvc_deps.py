"""dvc.yaml stays honest: each stage depends on every kdflow module its script imports.

A module missing from a stage's deps would let `dvc repro` keep results that a code change
made stale. The modules are what ``sys.modules`` holds after importing the stage script in a
fresh interpreter; a dep that is a folder covers everything under it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("stage_under_test", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items()
                        if (n == "kdflow" or n.startswith("kdflow.")) and getattr(m, "__file__", None))))
"""


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported_files(script: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / script)],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    return [Path(p).resolve().relative_to(ROOT).as_posix() for p in json.loads(out.stdout)]


def uncovered(files: list[str], deps: list[str]) -> list[str]:
    """The files that no dep names, either exactly or as a folder above them."""
    return [f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)]


def script_of(stage: dict) -> str:
    cmd = (stage.get("do") or stage)["cmd"]
    return next(w for w in cmd.split() if w.startswith("stages/") and w.endswith(".py"))


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_cover_every_imported_module(name: str) -> None:
    stage = stages()[name]
    deps = [str(d) for d in (stage.get("do") or stage)["deps"]]
    script = script_of(stage)
    files = imported_files(script)
    assert any(f.endswith("kdflow/config.py") for f in files)  # the probe really saw imports
    assert script in deps, f"{name}: its own script {script} is not a dep"
    missing = uncovered(files, deps)
    assert not missing, f"dvc.yaml stage {name} lacks deps on {missing}"
    # and the check bites: drop any one library dep and it is reported
    lib = [d for d in deps if d.startswith("src/kdflow")]
    for dropped in lib:
        assert uncovered(files, [d for d in deps if d != dropped]), (
            f"{name}: dep {dropped} covers no imported module (stale entry?)"
        )
