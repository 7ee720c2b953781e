"""Datasets and the prepare step on real (small) data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdflow.config import DataConfig
from kdflow.datasets import DATASETS
from kdflow.datasets.idx import DEBIAN_FASHION
from kdflow.errors import KdflowError, ParamsError
from kdflow.tasks import load_task, prepare

HAS_FASHION = (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file()


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_digits_loader_is_offline_and_uint8() -> None:
    raw = DATASETS.get("digits")(DataConfig(dataset="digits"))
    assert raw.train_x.dtype == np.uint8 and raw.train_x.shape[1:] == (1, 8, 8)
    assert len(raw.train_y) + len(raw.test_y) == 1797
    assert raw.train_x.max() > 200  # rescaled from 0..16


@pytest.mark.skipif(not HAS_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_files() -> None:
    raw = DATASETS.get("fashion_mnist")(DataConfig())
    assert raw.train_x.shape == (60000, 1, 28, 28) and raw.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(raw.train_y).tolist() == [6000] * 10
    assert raw.class_names[0] == "T-shirt/top"


@pytest.mark.skipif(not HAS_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
def test_default_manifest_counts(tmp_path: Path) -> None:
    m = prepare(DataConfig(), tmp_path)
    assert m["old"]["per_class"]["train"] == dict.fromkeys(
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"], 5400
    )
    assert set(m["old"]["per_class"]["val"].values()) == {600}
    assert set(m["old"]["per_class"]["test"].values()) == {1000}
    assert set(m["new"]["per_class"]["train"].values()) == {100}
    assert set(m["new"]["per_class"]["test"].values()) == {1000}


def test_missing_dataset_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(KdflowError, match=r"not found: looked in .*set data.download: true"):
        DATASETS.get("mnist")(DataConfig(dataset="mnist", root=str(tmp_path)))
    with pytest.raises(KdflowError, match="not found under"):
        DATASETS.get("cifar10")(DataConfig(dataset="cifar10", root=str(tmp_path)))


def test_prepare_is_deterministic_and_balanced(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="digits", shots_per_class=20)
    prepare(cfg, tmp_path / "a")
    prepare(cfg, tmp_path / "b")
    for task in ("old", "new"):
        assert _bytes(tmp_path / "a" / task) == _bytes(tmp_path / "b" / task)
    manifest = json.loads((tmp_path / "a" / "new" / "manifest.json").read_text())
    assert set(manifest["per_class"]["train"].values()) == {20}
    assert [c["id"] for c in manifest["classes"]] == [5, 6, 7, 8, 9]
    # another seed draws other shots
    prepare(cfg.model_copy(update={"seed": 1}), tmp_path / "c")
    assert _bytes(tmp_path / "a" / "new") != _bytes(tmp_path / "c" / "new")


def test_new_task_change_leaves_old_task_bytes_identical(tmp_path: Path) -> None:
    prepare(DataConfig(dataset="digits", shots_per_class=20), tmp_path / "a")
    prepare(DataConfig(dataset="digits", shots_per_class=5), tmp_path / "b")
    assert _bytes(tmp_path / "a" / "old") == _bytes(tmp_path / "b" / "old")
    assert _bytes(tmp_path / "a" / "new") != _bytes(tmp_path / "b" / "new")


def test_normalisation_comes_from_old_train_only(digits_dir: Path) -> None:
    old, new = load_task(digits_dir / "old"), load_task(digits_dir / "new")
    x = old["train"][0][:]  # the whole split as one tensor
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2
    assert new.manifest["normalization"] == old.manifest["normalization"]
    assert old.num_classes == 5 and set(old.splits) == {"train", "val", "test"}


def test_splits_are_read_batch_by_batch(digits_dir: Path) -> None:
    import pickle

    x, y = load_task(digits_dir / "old")["train"]
    from kdflow.images import NpyRows

    assert isinstance(x.array, NpyRows)  # read per batch, not loaded
    assert len(pickle.dumps(x)) < 2000  # a worker gets the path, not the pixels
    whole = x[:]
    idx = torch.tensor([7, 3, 3, 0])
    torch.testing.assert_close(x[idx], whole[idx], rtol=0, atol=0)  # any order, repeats
    sub = x.subset(y == 2)
    assert len(sub) == int((y == 2).sum()) and sub.shape[1:] == whole.shape[1:]
    torch.testing.assert_close(sub[1:3], whole[y == 2][1:3], rtol=0, atol=0)


def test_too_many_shots_and_unknown_class_ids(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"data.shots_per_class = 500 is more than class 5"):
        prepare(DataConfig(dataset="digits", shots_per_class=500), tmp_path)
    with pytest.raises(ParamsError, match=r"data.new_classes .* names classes \[12\]"):
        prepare(DataConfig(dataset="digits", new_classes=[5, 12]), tmp_path)
    assert not (tmp_path / "old").exists()


def _write_images(root: Path, classes: dict[str, int], size: int = 12) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")


def test_imagefolder(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", {"cat": 10, "dog": 10, "eel": 10, "fox": 10})
    cfg = DataConfig(
        dataset="imagefolder",
        root=str(tmp_path / "imgs"),
        image_size=16,
        old_classes=[0, 1],
        new_classes=[2, 3],
        shots_per_class=4,
    )
    raw = DATASETS.get("imagefolder")(cfg)
    assert raw.class_names == ["cat", "dog", "eel", "fox"]
    assert raw.train_x.shape[1:] == (3, 16, 16) and len(raw.train_y) + len(raw.test_y) == 40
    m = prepare(cfg, tmp_path / "out")
    assert m["new"]["per_class"]["train"] == {"eel": 4, "fox": 4}


def test_classes_by_folder_name(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", {"cat": 10, "dog": 10, "eel": 10, "fox": 10})
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path / "imgs"), image_size=16,
                     old_classes=["fox", "cat"], new_classes=[1, "eel"], shots_per_class=4)  # fmt: skip
    m = prepare(cfg, tmp_path / "out")
    assert m["old"]["classes"] == [{"id": 3, "name": "fox"}, {"id": 0, "name": "cat"}]
    assert m["new"]["per_class"]["train"] == {"dog": 4, "eel": 4}
    with pytest.raises(ParamsError, match="name the same class"):
        prepare(cfg.model_copy(update={"new_classes": ["dog", 3]}), tmp_path / "out2")


def test_imagefolder_empty_or_single_class(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdflowError, match="no class subfolders"):
        DATASETS.get("imagefolder")(DataConfig(dataset="imagefolder", root=str(tmp_path / "empty")))
    _write_images(tmp_path / "one", {"cat": 3})
    with pytest.raises(KdflowError, match=r"one class \(cat\); at least 2"):
        DATASETS.get("imagefolder")(DataConfig(dataset="imagefolder", root=str(tmp_path / "one")))


@pytest.mark.parametrize("policy", ["pad_crop", "resized_crop"])
def test_device_memory_path_gives_the_host_paths_batches(digits_dir: Path, policy: str) -> None:
    """The split held in (CPU) device memory yields the same model inputs, in the same order,
    as the DataLoader path reading rows from disk, augmentation included."""
    from kdflow.budget import Budget
    from kdflow.config import TrainConfig
    from kdflow.data import Feed, TensorBatches

    task = load_task(digits_dir / "old")
    data = TensorBatches(*task["train"])
    cpu = torch.device("cpu")
    seen = {}
    for where in ("off", "on"):
        cfg = TrainConfig(batch_size=32, augment=True, augment_policy=policy, device_data=where)
        budget = Budget(data, cfg, cpu)
        assert budget.on_device == (where == "on")
        feed, gen = Feed(data, cpu, True, policy, True), torch.Generator()
        batches = []
        for epoch in range(2):
            gen.manual_seed(epoch)
            batches += [(feed(x, gen), y, idx) for x, y, idx, _ in budget.batches(epoch)]
        seen[where] = batches
    assert len(seen["on"]) == len(seen["off"]) > 2
    for (xa, ya, ia), (xb, yb, ib) in zip(seen["off"], seen["on"], strict=True):
        assert torch.equal(ia, ib) and torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
    plain = Feed(data, cpu, False, policy, True)(data.stored()[seen["off"][0][2]], gen)
    assert not torch.equal(plain, seen["off"][0][0])  # augmentation did change the images


def test_both_paths_train_the_same_weights_with_dropout(digits_dir: Path) -> None:
    """Held in memory or read from disk, a model with dropout (MobileNets, timm heads) ends
    with the same weights: the loader must not draw from the generator dropout uses, or a
    result would depend on whether the split fitted in the RAM free at the time."""
    from torch import nn

    from kdflow.config import TrainConfig
    from kdflow.trainer import Trainer

    task = load_task(digits_dir / "old")
    x, _ = task["train"]
    weights = {}
    for where in ("off", "on"):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(x[:1].numel(), 32), nn.ReLU(),
                            nn.Dropout(0.5), nn.Linear(32, 5))  # fmt: skip
        cfg = TrainConfig(epochs=3, batch_size=64, min_steps=0, device="cpu", patience=None,
                          channels_last=False, device_data=where)  # fmt: skip
        Trainer(cfg, net, task["train"], task["val"]).fit()
        weights[where] = [p.detach().clone() for p in net.parameters()]
    for a, b in zip(weights["off"], weights["on"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_auto_holds_a_split_that_fits_in_ram_on_cpu(digits_dir: Path) -> None:
    """auto gathers from a resident copy on CPU too, unless it would not fit its share or
    worker processes were asked for; a bare YAML on/off (read as true/false) is understood."""
    import yaml

    from kdflow.budget import Budget
    from kdflow.config import TrainConfig
    from kdflow.data import DeviceBatches, TensorBatches

    data, cpu = TensorBatches(*load_task(digits_dir / "old")["train"]), torch.device("cpu")
    auto = Budget(data, TrainConfig(device_data="auto"), cpu)
    assert auto.on_device and isinstance(auto.loader, DeviceBatches)
    assert not Budget(data, TrainConfig(device_data="auto", workers=1), cpu).on_device
    assert not Budget(data, TrainConfig(device_data="auto", device_data_share=1e-9), cpu).on_device
    for text, want in (("on", "on"), ("off", "off"), ("auto", "auto")):
        assert TrainConfig(**yaml.safe_load(f"device_data: {text}")).device_data == want


def test_batched_crop_and_flip_match_a_per_image_reference() -> None:
    from kdflow.augment import hflip, pad_crop

    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(3)
    out = pad_crop(x, gen, pad=2)
    gen.manual_seed(3)
    oy, ox = torch.randint(0, 5, (6,), generator=gen), torch.randint(0, 5, (6,), generator=gen)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):  # the reference: one image at a time
        ref = padded[i, :, oy[i] : oy[i] + 8, ox[i] : ox[i] + 8]
        assert torch.equal(out[i], ref)
    gen.manual_seed(5)
    flipped = hflip(x, gen)
    gen.manual_seed(5)
    which = torch.rand(6, generator=gen) < 0.5
    for i in range(6):
        assert torch.equal(flipped[i], x[i].flip(-1) if which[i] else x[i])
    assert 0 < int(which.sum()) < 6  # both cases were exercised
