"""One recipe layer: what a benchmark trains from params is what the stage trained, bit for bit."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from kdflow.checkpoint import load_model
from kdflow.distill import load_teachers
from kdflow.io import safe_load
from kdflow.models import model_spec
from kdflow.params import parse_params
from kdflow.pipeline.recipes import distilled, trained_role, transferred
from kdflow.tasks import load_task


def _same_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    saved = safe_load(checkpoint, "model")["state_dict"]
    mine = model.state_dict()
    assert set(mine) == set(saved)
    different = [k for k in mine if not torch.equal(mine[k].cpu(), saved[k])]
    assert not different, f"{checkpoint}: {different[:3]} differ"


def test_bench_recipes_give_the_stages_weights(pipeline_repo: Path, tmp_path: Path) -> None:
    repo = pipeline_repo
    params = parse_params(yaml.safe_load((repo / "params.yaml").read_text()))
    old, new = load_task(repo / "data/prepared/old"), load_task(repo / "data/prepared/new")

    student, _ = trained_role(params, "student", old)
    _same_weights(student, repo / "models/student.pt")

    teachers, hashes = load_teachers([repo / "models/teacher.pt"], old.num_classes, "cpu")
    model, _ = distilled(params, old, teachers, hashes, cache_dir=tmp_path)
    _same_weights(model, repo / "models/distilled.pt")

    for name in params.transfer.source:  # each source's stage
        source, ckpt = load_model(repo / f"models/{name}.pt", "source")
        model = transferred(params, "lwf", source, ckpt["spec"], old, new)
        _same_weights(model, repo / f"models/transfer/{name}-lwf.pt")
    # scratch: the student's architecture from params, whatever model is handed in
    model = transferred(params, "scratch", student, model_spec(params.models.student), old, new)
    _same_weights(model, repo / "models/transfer/scratch.pt")
