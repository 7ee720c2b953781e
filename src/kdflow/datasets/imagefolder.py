"""A user's own images: ``root/<class>/*.png`` (or ``root/train/<class>`` and ``root/test/<class>``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdflow.datasets import DATASETS, RawData
from kdflow.errors import KdflowError

EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _scan(folder: Path) -> dict[str, list[Path]]:
    classes = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.rglob("*") if f.suffix.lower() in EXTS)
        if files:
            classes[d.name] = files
    return classes


def _read(files: list[Path], size: int, gray: bool) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(files), 1 if gray else 3, size, size), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("L" if gray else "RGB").resize((size, size), Image.BILINEAR)
                a = np.asarray(im)
        except OSError as exc:
            raise KdflowError(f"imagefolder: cannot read image {f}: {exc}") from None
        out[i] = a[None] if gray else a.transpose(2, 0, 1)
    return out


@DATASETS.register("imagefolder")
def imagefolder(cfg) -> RawData:
    from PIL import Image

    if not cfg.root:
        raise KdflowError("imagefolder needs data.root: a folder with one subfolder per class")
    root = Path(cfg.root)
    if not root.is_dir():
        raise KdflowError(f"imagefolder: data.root {root} is not a directory")
    split = (root / "train").is_dir() and (root / "test").is_dir()
    train = _scan(root / "train" if split else root)
    if not train:
        raise KdflowError(
            f"imagefolder {root} has no class subfolders with images ({sorted(EXTS)})"
        )
    if len(train) < 2:
        raise KdflowError(
            f"imagefolder {root} has one class ({next(iter(train))}); at least 2 are needed"
        )
    names = list(train)
    first = next(iter(train.values()))[0]
    with Image.open(first) as im:
        gray = im.mode in ("L", "1", "I;16", "I")
    size = cfg.image_size or 32
    rng = np.random.default_rng(0)
    tr_f, tr_y, te_f, te_y = [], [], [], []
    test = _scan(root / "test") if split else {}
    for label, name in enumerate(names):
        files = train[name]
        if split:
            tr, te = files, test.get(name, [])
        else:  # hold out a fixed 20% per class as the test set
            order = rng.permutation(len(files))
            n_test = max(1, len(files) // 5) if len(files) > 1 else 0
            te = [files[i] for i in order[:n_test]]
            tr = [files[i] for i in order[n_test:]]
        tr_f += tr
        te_f += te
        tr_y += [label] * len(tr)
        te_y += [label] * len(te)
    return RawData(
        _read(tr_f, size, gray),
        np.array(tr_y),
        _read(te_f, size, gray),
        np.array(te_y),
        names,
        str(root),
    )
