"""Split a dataset into the old task and the new (few-shot) task, and load them back.

Each task is a folder of ``.npy`` arrays (uint8 images, int64 labels) plus ``manifest.json``.
Written bytes depend only on the params, so DVC sees an unchanged old task when only the new
task's settings move.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdflow.config import DataConfig
from kdflow.datasets import DATASETS, RawData
from kdflow.errors import KdflowError, ParamsError
from kdflow.images import Images, write_npy_rows
from kdflow.io import atomic_dir, atomic_write_json, sha256_files


def _subsample(idx: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    if n is None or len(idx) <= n:
        return idx
    return np.sort(rng.choice(idx, size=n, replace=False))


def _split_old(raw: RawData, cfg: DataConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    train, val, test = [], [], []
    for c in cfg.old_classes:
        pool = _subsample(np.flatnonzero(raw.train_y == c), cfg.max_train_per_class, rng)
        n_val = round(len(pool) * cfg.val_fraction)
        if n_val < 1 or n_val >= len(pool):
            raise ParamsError(
                f"params.yaml: data.val_fraction = {cfg.val_fraction} leaves class {c} "
                f"({len(pool)} images) without a train or val image; allowed: a fraction that "
                "keeps at least one image on each side"
            )
        perm = rng.permutation(pool)
        val.append(np.sort(perm[:n_val]))
        train.append(np.sort(perm[n_val:]))
        test.append(_subsample(np.flatnonzero(raw.test_y == c), cfg.max_test_per_class, rng))
    return {
        "train": np.concatenate(train),
        "val": np.concatenate(val),
        "test": np.concatenate(test),
    }


def _split_new(raw: RawData, cfg: DataConfig) -> dict[str, np.ndarray]:
    # Its own generator: the new task's draw never shifts the old task's.
    rng = np.random.default_rng([cfg.seed, 1])
    train, test = [], []
    for c in cfg.new_classes:
        pool = np.flatnonzero(raw.train_y == c)
        if cfg.shots_per_class > len(pool):
            raise ParamsError(
                f"params.yaml: data.shots_per_class = {cfg.shots_per_class} is more than class "
                f"{c} ({raw.class_names[c]}) has ({len(pool)} training images); "
                f"allowed: 1..{len(pool)}"
            )
        train.append(np.sort(rng.choice(pool, size=cfg.shots_per_class, replace=False)))
        test.append(_subsample(np.flatnonzero(raw.test_y == c), cfg.max_test_per_class, rng))
    if not train:  # data.new_classes: [] (e.g. a CIFAR-100 recipe using all 100 classes)
        return {"train": np.zeros(0, np.int64), "test": np.zeros(0, np.int64)}
    return {"train": np.concatenate(train), "test": np.concatenate(test)}


CHUNK_BYTES = 16 << 20  # uint8 bytes per read: bounded memory at any dataset size


def _chunk(x: Any) -> int:
    per_image = int(np.prod(x.shape[1:]))
    return max(1, CHUNK_BYTES // per_image)


def save_rows(path: Path, src: np.ndarray, rows: np.ndarray) -> None:
    """``np.save(path, src[rows])`` without holding ``src[rows]`` in memory (same bytes)."""
    step = _chunk(src)
    blocks = (src[rows[i : i + step]] for i in range(0, len(rows), step))
    write_npy_rows(path, (len(rows), *src.shape[1:]), blocks)


def channel_stats(x: np.ndarray, rows: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``x[rows] / 255``, two passes over chunks (float64)."""
    n = len(rows) * x.shape[2] * x.shape[3]
    step, total = _chunk(x), np.zeros(x.shape[1])
    for i in range(0, len(rows), step):
        total += (x[rows[i : i + step]].astype(np.float64) / 255.0).sum(axis=(0, 2, 3))
    mean = total / n
    sq = np.zeros(x.shape[1])
    for i in range(0, len(rows), step):
        part = x[rows[i : i + step]].astype(np.float64) / 255.0 - mean[None, :, None, None]
        sq += (part * part).sum(axis=(0, 2, 3))
    std = np.sqrt(sq / n)
    return [round(float(v), 6) for v in mean], [round(max(float(v), 1e-6), 6) for v in std]


def _write_task(
    out: Path,
    raw: RawData,
    idx: dict[str, np.ndarray],
    classes: list[int],
    mean: list[float],
    std: list[float],
    cfg: DataConfig,
) -> dict[str, Any]:
    remap = {c: i for i, c in enumerate(classes)}
    with atomic_dir(out) as tmp:
        per_class = {}
        for split, ids in idx.items():
            src_x, src_y = (
                (raw.test_x, raw.test_y) if split == "test" else (raw.train_x, raw.train_y)
            )
            y = np.array([remap[int(v)] for v in src_y[ids]], dtype=np.int64)
            save_rows(tmp / f"{split}_x.npy", src_x, ids)
            np.save(tmp / f"{split}_y.npy", y)
            per_class[split] = {raw.class_names[c]: int((y == i).sum()) for c, i in remap.items()}
        manifest = {
            "dataset": cfg.dataset,
            "classes": [{"id": c, "name": raw.class_names[c]} for c in classes],
            "per_class": per_class,
            "normalization": {"mean": mean, "std": std},
            "shape": list(raw.train_x.shape[1:]),
            "seed": cfg.seed,
            "content_hash": sha256_files(sorted(tmp.glob("*.npy"))),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


def resolve_classes(cfg: DataConfig, names: list[str]) -> DataConfig:
    """Class lists given by name (an image folder's subfolders) or id, as ids."""
    k, ids = len(names), {}
    for key in ("old_classes", "new_classes"):
        listed = getattr(cfg, key)
        bad = [c for c in listed if (c not in names if isinstance(c, str) else c >= k)]
        if bad:
            shown = ", ".join(names[:20]) + (", ..." if k > 20 else "")
            raise ParamsError(
                f"params.yaml: data.{key} = {listed} names classes {bad} that {cfg.dataset} "
                f"does not have; allowed: ids 0..{k - 1} or names {shown}"
            )
        ids[key] = [names.index(c) if isinstance(c, str) else c for c in listed]
    both = sorted(set(ids["old_classes"]) & set(ids["new_classes"]))
    if both or any(len(set(v)) != len(v) for v in ids.values()):
        raise ParamsError(
            f"params.yaml: data.old_classes and data.new_classes name the same class "
            f"({[names[i] for i in both] or 'twice in one list'}); they must be disjoint"
        )
    return cfg.model_copy(update=ids)


def prepare(cfg: DataConfig, out_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Build ``out_dir/old`` and ``out_dir/new`` from the configured dataset."""
    raw = DATASETS.get(cfg.dataset)(cfg)
    cfg = resolve_classes(cfg, raw.class_names)
    old_idx, new_idx = _split_old(raw, cfg), _split_new(raw, cfg)
    mean, std = channel_stats(raw.train_x, old_idx["train"])
    out_dir = Path(out_dir)
    try:
        return {
            "old": _write_task(out_dir / "old", raw, old_idx, cfg.old_classes, mean, std, cfg),
            "new": _write_task(out_dir / "new", raw, new_idx, cfg.new_classes, mean, std, cfg),
        }
    finally:
        raw.close()


@dataclass
class Task:
    """A prepared task: images per split (read from disk by rows, normalised on access),
    labels, class info."""

    path: Path
    splits: dict[str, tuple[Images, Tensor]]
    manifest: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.manifest["classes"])

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.manifest["classes"]]

    @property
    def in_channels(self) -> int:
        return int(self.manifest["shape"][0])

    @property
    def image_size(self) -> int:
        return int(self.manifest["shape"][-1])

    @property
    def content_hash(self) -> str:
        return str(self.manifest["content_hash"])

    def __getitem__(self, split: str) -> tuple[Images, Tensor]:
        return self.splits[split]


def load_task(path: str | Path) -> Task:
    """Load a prepared task folder, normalised with the old task's statistics."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise KdflowError(f"prepared task {path} not found; run the prepare stage first")
    try:
        manifest = json.loads(mpath.read_text())
        norm = manifest["normalization"]
        splits = {}
        for split in manifest["per_class"]:
            x = Images(path / f"{split}_x.npy", norm["mean"], norm["std"])
            y = torch.from_numpy(np.load(path / f"{split}_y.npy", allow_pickle=False))
            if len(x) != len(y):
                raise ValueError(f"{split}: {len(x)} images but {len(y)} labels")
            splits[split] = (x, y.long())
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise KdflowError(f"prepared task {path} is damaged ({exc}); re-run prepare") from None
    return Task(path, splits, manifest)


def label_mask(y: Tensor, fraction: float, seed: int) -> Tensor:
    """Which training images keep their label (``train.<role>.label_fraction``), by class.

    Each class keeps ``round(fraction * n)`` labels, at least one; the draw depends only on
    the seed, so the student alone and the distilled student see the same labelled images.
    """
    if fraction >= 1.0:
        return torch.ones_like(y, dtype=torch.bool)
    rng = np.random.default_rng([seed, 2])
    keep = torch.zeros_like(y, dtype=torch.bool)
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten().numpy()
        n = max(1, round(fraction * len(idx)))
        keep[torch.from_numpy(np.sort(rng.choice(idx, size=n, replace=False)))] = True
    return keep


def labelled_train(
    task: Task, fraction: float, seed: int, hide: bool = False
) -> tuple[Images, Tensor]:
    """The training split with only ``fraction`` of its labels: the labelled images alone, or
    (``hide``) every image with -1 in place of a dropped label (for distillation)."""
    x, y = task["train"]
    keep = label_mask(y, fraction, seed)
    if hide:
        return x, torch.where(keep, y, torch.full_like(y, -1))
    if bool(keep.all()):
        return x, y
    return x.subset(keep), y[keep]
