"""A user's own images: ``root/<class>/*.png`` (or ``root/train/<class>`` and ``root/test/<class>``).

Decoded in parallel at ``data.image_size`` (shorter side resized, centre crop: the aspect ratio
is kept) into uint8 arrays on disk, written block by block, so a folder of any size never sits in memory.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kdflow.datasets import DATASETS, RawData
from kdflow.errors import KdflowError
from kdflow.images import NpyRows, write_npy_rows

EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _scan(folder: Path) -> dict[str, list[Path]]:
    classes = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.rglob("*") if f.suffix.lower() in EXTS)
        if files:
            classes[d.name] = files
    return classes


def _load(path: Path, size: int, gray: bool) -> np.ndarray:
    """One image as torchvision's Resize(size) + CenterCrop(size) would: the shorter side
    scaled to ``size`` (aspect ratio kept), then the centre ``size`` x ``size``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if gray else "RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
            left, top = (nw - size) // 2, (nh - size) // 2
            a = np.asarray(im.crop((left, top, left + size, top + size)))
    except OSError as exc:
        raise KdflowError(f"imagefolder: cannot read image {path}: {exc}") from None
    return a[None] if gray else a.transpose(2, 0, 1)


def _read(files: list[Path], size: int, gray: bool, out: Path, what: str) -> NpyRows:
    """Decode ``files`` in parallel into a uint8 ``.npy`` on disk, with progress; returns
    a reader of its rows (nothing of it stays in memory)."""
    workers = max(1, min(16, os.cpu_count() or 1))
    bar = None
    if sys.stderr.isatty() or len(files) >= 2000:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc=f"decoding {what}", unit="img", file=sys.stderr,
                   mininterval=1.0)  # fmt: skip

    def blocks():
        with ThreadPoolExecutor(workers) as pool:  # PIL decodes and resizes without the GIL
            for start in range(0, len(files), 512):
                chunk = files[start : start + 512]
                yield np.stack(list(pool.map(lambda f: _load(f, size, gray), chunk)))
                if bar is not None:
                    bar.update(len(chunk))

    write_npy_rows(out, (len(files), 1 if gray else 3, size, size), blocks())
    if bar is not None:
        bar.close()
    return NpyRows(out)


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
    cache = Path(tempfile.mkdtemp(prefix="kdflow-decode-"))  # deleted when prepare is done
    try:
        train_x = _read(tr_f, size, gray, cache / "train.npy", "train images")
        test_x = _read(te_f, size, gray, cache / "test.npy", "test images")
    except BaseException:
        shutil.rmtree(cache, ignore_errors=True)
        raise
    return RawData(
        train_x,
        np.array(tr_y),
        test_x,
        np.array(te_y),
        names,
        str(root),
        cleanup=lambda: shutil.rmtree(cache, ignore_errors=True),
    )
