"""Atomic writes, hashes and safe checkpoint loading.

Every output goes to a temporary sibling first and is renamed into place, so a killed stage
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from kdflow.errors import KdflowError

TMP_MARK = ".tmp-"


def tmp_sibling(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place (pid-tagged, hidden)."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(directory: str | Path) -> list[Path]:
    """Remove temporary files left by a killed run (whose process is gone)."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        if p.name.startswith(".") and TMP_MARK in p.name:
            pid = p.name.rsplit(TMP_MARK, 1)[-1]
            if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def ensure_dir(path: str | Path) -> Path:
    """Create a directory and prove it writable, turning every failure into one clear line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe{TMP_MARK}{os.getpid()}"
        probe.touch()
        probe.unlink()
    except (FileExistsError, NotADirectoryError):
        raise KdflowError(f"cannot write to {path}: a file is in the way; move it") from None
    except OSError as exc:
        raise KdflowError(f"output directory {path} is not writable ({exc.strerror})") from None
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    ensure_dir(path.parent)
    tmp = tmp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = tmp_sibling(path)
    old = path.with_name(f".{path.name}.old{TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            path.rename(old)
        try:
            tmp.rename(path)
        except OSError:
            if old.exists() and not path.exists():
                old.rename(path)  # never leave neither version behind
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hash DVC records for a file in dvc.lock: ties an MLflow run to a DVC output."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def safe_load(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with one-line errors for every way it can fail."""
    path = Path(path)
    if not path.is_file():
        raise KdflowError(f"{what} {path} not found; run the stage that produces it (dvc repro)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            raise KdflowError(
                f"{what} {path} holds Python objects beyond tensors and was refused "
                "(loaded with weights_only=True for safety); save a plain state dict instead"
            ) from None
        raise KdflowError(f"{what} {path} is corrupt or truncated ({exc}); re-create it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KdflowError(f"{what} {path} is corrupt or truncated ({msg}); re-create it") from None
    if not isinstance(obj, dict):
        raise KdflowError(f"{what} {path} is not a kdflow checkpoint (found {type(obj).__name__})")
    return obj
