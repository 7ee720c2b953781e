"""MNIST-format (IDX) datasets: Fashion-MNIST and MNIST, read from local files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from kdflow.datasets import DATASETS, RawData
from kdflow.errors import KdflowError

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic, dims, then big-endian uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise KdflowError(f"{path} is not an IDX uint8 file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise KdflowError(f"{path} is truncated: expected {int(np.prod(dims))} values")
    return arr.reshape(dims)


def _find(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _load_idx(dirs: list[Path]) -> dict[str, np.ndarray] | None:
    found = {k: _find(dirs, v) for k, v in FILES.items()}
    if any(p is None for p in found.values()):
        return None
    out = {k: read_idx(p) for k, p in found.items()}  # type: ignore[arg-type]
    out["train_x"] = out["train_x"][:, None]
    out["test_x"] = out["test_x"][:, None]
    return out


def _idx_dataset(cfg, tv_name: str, names: list[str], extra: list[Path]) -> RawData:
    root = Path(cfg.root) if cfg.root else Path("data/raw")
    dirs = [root, root / tv_name / "raw", *extra]
    arrays = _load_idx(dirs)
    if arrays is None and cfg.download:
        import torchvision

        getattr(torchvision.datasets, tv_name)(str(root), train=True, download=True)
        getattr(torchvision.datasets, tv_name)(str(root), train=False, download=True)
        arrays = _load_idx(dirs)
    if arrays is None:
        hint = (
            "install Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist), "
            if tv_name == "FashionMNIST"
            else ""
        )
        raise KdflowError(
            f"dataset {tv_name} not found: looked in {', '.join(str(d) for d in dirs)}; "
            f"{hint}put the IDX files in data.root, or set data.download: true"
        )
    return RawData(**arrays, class_names=names, source=str(dirs))


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg) -> RawData:
    return _idx_dataset(cfg, "FashionMNIST", FASHION_CLASSES, [DEBIAN_FASHION])


@DATASETS.register("mnist")
def mnist(cfg) -> RawData:
    return _idx_dataset(cfg, "MNIST", [str(i) for i in range(10)], [])
