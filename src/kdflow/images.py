"""Prepared images on disk, read batch by batch: a split is never loaded whole.

A split is a uint8 ``.npy`` array (N, C, H, W) read row by row with ``pread`` (``NpyRows``:
plain reads, so the pages stay in the OS cache and out of the process's resident memory, which
a memory map would grow to the file's size); indexing returns float tensors normalised with the
task's statistics (``x / 255``, then ``(x - mean) / std``), the same arithmetic for every batch,
so results do not depend on how a split is read. It pickles as a path (DataLoader workers open
the file themselves), and ``subset`` makes views, not copies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


class NpyRows:
    """Rows of a uint8 ``.npy`` file on demand: ``rows[idx]`` reads just those rows."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(fh)
            self.offset = fh.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4:
            raise ValueError(f"{self.path} holds {dtype} {shape}, not uint8 (N, C, H, W)")
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(np.uint8), 4
        self.row_bytes = int(np.prod(shape[1:]))
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, count: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        want = count * self.row_bytes
        data = os.pread(self._fd, want, self.offset + start * self.row_bytes)
        if len(data) != want:
            raise ValueError(f"{self.path} is truncated")
        return data

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                n = max(0, stop - start)
                buf = self._read(start, n) if n else b""
                return np.frombuffer(buf, np.uint8).reshape(n, *self.shape[1:]).copy()
            key = np.arange(start, stop, step)
        rows = np.asarray(key, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        i = 0
        while i < len(rows):  # one read per run of consecutive rows
            j = i + 1
            while j < len(rows) and sorted_rows[j] == sorted_rows[j - 1] + 1:
                j += 1
            block = np.frombuffer(self._read(int(sorted_rows[i]), j - i), np.uint8)
            out[order[i:j]] = block.reshape(j - i, *self.shape[1:])
            i = j
        return out


def write_npy_rows(path: Path, shape: tuple[int, ...], chunks: Any) -> None:
    """Write a uint8 ``.npy`` from an iterable of row blocks, with plain writes (the same
    bytes ``np.save`` writes), never holding the array."""
    header = {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for block in chunks:
            fh.write(np.ascontiguousarray(block, dtype=np.uint8).tobytes())


class Images:
    """A split of uint8 images on disk, read by rows (pread) and normalised on access."""

    def __init__(
        self,
        path: str | Path,
        mean: list[float],
        std: list[float],
        rows: np.ndarray | None = None,
    ) -> None:
        self.path = Path(path)
        self.mean_values, self.std_values = list(mean), list(std)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.rows = rows
        self._arr: NpyRows | None = None

    # -- storage -----------------------------------------------------------------------
    @property
    def array(self) -> NpyRows:
        if self._arr is None:
            self._arr = NpyRows(self.path)
        return self._arr

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arr": None}  # a worker maps the file itself

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else int(self.array.shape[0])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.array.shape[1:]))

    def _positions(self, key: Any) -> np.ndarray | slice:
        if isinstance(key, Tensor):
            key = key.cpu().numpy()
        if isinstance(key, slice):
            if self.rows is None:
                return key
            return self.rows[key]
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        key = key.astype(np.int64)
        return key if self.rows is None else self.rows[key]

    def raw(self, key: Any) -> Tensor:
        """uint8 images (N, C, H, W): what augmentation works on."""
        return torch.from_numpy(self.array[self._positions(key)])

    def normalize(self, u8: Tensor) -> Tensor:
        return (u8.float().div_(255.0) - self._mean) / self._std

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, (int, np.integer)):
            return self.normalize(self.raw([int(key)]))[0]
        return self.normalize(self.raw(key))

    def subset(self, key: Any) -> Images:
        """A view of some rows (e.g. the labelled images): nothing is copied."""
        pos = self._positions(key)
        if isinstance(pos, slice):  # only without rows: with rows, positions are an array
            pos = np.arange(self.array.shape[0])[pos]
        return Images(self.path, self.mean_values, self.std_values, np.asarray(pos))

    def materialize(self) -> Tensor:
        """The whole split as one float tensor (small splits, notebooks, tests)."""
        return self[slice(None)]

    # Used where a tensor is expected (torch functions, tensor methods), a split is loaded
    # whole: convenient for small data; the library itself reads batch by batch.
    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        def load(a: Any) -> Any:
            if isinstance(a, Images):
                return a.materialize()
            if isinstance(a, (list, tuple)):
                return type(a)(load(v) for v in a)
            return a

        return func(*load(args), **{k: load(v) for k, v in (kwargs or {}).items()})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("path", "rows"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)
