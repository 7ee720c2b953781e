"""The published CIFAR-100 pair resnet32x4 -> resnet8x4 through the pipeline's own params.

Published (RepDistiller/mdistiller, 240 epochs, SGD lr 0.05, decay x0.1 at 150/180/210, batch
64, crop + flip): teacher 79.42, student alone 72.50, KD (T=4, CE 0.1 / KD 0.9) 73.33. This
script checks out the current commit into a git worktree, sets those params (plus the data:
all 100 classes as the old task, no new task; 10% of the training set held out for validation,
so expect a little less than the published figures), runs `dvc repro distill` there on every
visible GPU (`compute.nproc_per_node`), and writes the three test accuracies next to the
published ones to bench/results/cifar100.json.

Needs a CUDA GPU and torchvision's CIFAR-100 files (``cifar-100-python/``) under --root.
    python bench/cifar100.py --root /data/cifar [--workdir /tmp/kdflow-cifar100] [--epochs 240]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import save, table

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = {"teacher": 79.42, "student": 72.50, "distilled": 73.33}


def recipe(params: dict, root: str, epochs: int, gpus: int) -> dict:
    params["data"].update(dataset="cifar100", root=root, download=False, image_size=None,
                          old_classes=list(range(100)), new_classes=[], val_fraction=0.1,
                          max_train_per_class=None, max_test_per_class=None)  # fmt: skip
    params["models"]["teacher"].update(arch="resnet32x4", weights=None, fine_tune=True)
    params["models"]["student"].update(arch="resnet8x4", weights=None, fine_tune=True)
    schedule = dict(epochs=epochs, min_steps=0, batch_size=64, optimizer="sgd", lr=0.05,
                    momentum=0.9, weight_decay=5e-4, schedule="multistep",
                    milestones=[150 / 240, 180 / 240, 210 / 240], gamma=0.1, augment=True,
                    augment_policy="pad_crop", hflip=True, select="last", device="cuda",
                    amp=True, channels_last=True, workers=4)  # fmt: skip
    # one schedule for teacher, student and distillation: train.defaults, and the sections
    # keep nothing of their own (a key set there would win over the defaults)
    params["train"]["defaults"] = schedule
    params["train"]["teacher"] = {"label_fraction": 1.0}
    params["train"]["student"] = {"label_fraction": 1.0}  # the distilled student's labels too
    params["distill"]["train"] = {}
    # no new task, so no transfer runs; its section still inherits the defaults and must stay
    # valid (lwf's old-task targets need un-augmented images)
    params["transfer"]["train"] = {**(params["transfer"].get("train") or {}), "augment": False}
    params["distill"].update(method="kd", init="scratch")
    params["distill"]["methods"] = {**(params["distill"].get("methods") or {}),
                                    "kd": {"temperature": 4.0, "alpha": 0.9}}  # fmt: skip
    params["compute"].update(nproc_per_node=gpus, nnodes=1, rdzv_endpoint=None)
    return params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", required=True, help="folder holding cifar-100-python/")
    ap.add_argument("--workdir", default="/tmp/kdflow-cifar100")
    ap.add_argument("--epochs", type=int, default=240)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("cifar100: no CUDA GPU visible; this recipe is for a GPU machine")
    if not (Path(args.root) / "cifar-100-python").is_dir():
        raise SystemExit(f"cifar100: no cifar-100-python/ under {args.root}")
    work = Path(args.workdir)
    if work.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(work)], cwd=ROOT)
        shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(work)], cwd=ROOT, check=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    gpus = torch.cuda.device_count()
    (work / "params.yaml").write_text(
        yaml.safe_dump(recipe(params, str(Path(args.root).resolve()), args.epochs, gpus))
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(["dvc", "repro", "distill"], cwd=work, check=True, env=env)
    got = {
        "teacher": json.loads((work / "metrics/teacher.json").read_text())["test"]["accuracy"],
        "student": json.loads((work / "metrics/student.json").read_text())["test"]["accuracy"],
        "distilled": json.loads((work / "metrics/distill.json").read_text())["test"]["accuracy"],
    }
    rows = [{"model": k, "kdflow": round(100 * v, 2), "published": PUBLISHED[k],
             "difference": round(100 * v - PUBLISHED[k], 2)} for k, v in got.items()]  # fmt: skip
    print(table(rows))
    out = {
        "rows": rows,
        "epochs": args.epochs,
        "gpus": gpus,
        "device": torch.cuda.get_device_name(),
    }
    print(f"\nwrote {save('cifar100', out)}")


if __name__ == "__main__":
    main()
