"""Where the MLflow store is, whether it answers, and keeping a copied repository's store its own.

The default store is ``mlflow.db`` at the repository root with artifacts beside it in
``mlartifacts/``, so a repository (and a copy of it) carries its whole tracking history.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.exceptions import MlflowException

from kdflow.errors import KdflowError

if TYPE_CHECKING:
    from kdflow.config import TrackingConfig

T = TypeVar("T")
EXP_COPIES = f"{os.sep}.dvc{os.sep}tmp{os.sep}exps{os.sep}"  # where DVC runs --queue/--temp
SQLITE = "sqlite:///"


def project_root() -> Path:
    """The repository the default store belongs to, also from DVC's experiment copies.

    ``dvc exp run --queue`` / ``--temp`` run the stages in a copy under
    ``<repo>/.dvc/tmp/exps/`` (``DVC_ROOT`` points there) and delete it afterwards: a store
    inside the copy would vanish with it, so runs go to the repository's own store.
    """
    root = str(Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve())
    return Path(root.split(EXP_COPIES)[0]) if EXP_COPIES in root + os.sep else Path(root)


def store_uri(uri: str | None = None) -> str:
    """``uri``, then ``MLFLOW_TRACKING_URI``, then ``mlflow.db`` at the repository root."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or env or f"{SQLITE}{project_root() / 'mlflow.db'}"


def tracking_uri(cfg: TrackingConfig) -> str:
    """params' ``tracking.uri``, then ``MLFLOW_TRACKING_URI``, then the repository's store."""
    return store_uri(cfg.uri)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for other stores and in-memory ones."""
    if not uri.startswith(SQLITE):
        return None
    path = uri.removeprefix(SQLITE).split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def default_store(uri: str) -> Path | None:
    """The sqlite file of the repository's own store, when ``uri`` is that store."""
    db = sqlite_path(uri)
    return (
        db if db is not None and db.resolve() == (project_root() / "mlflow.db").resolve() else None
    )


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite database (inside the
    repository); None lets the store decide (a server's artifact store)."""
    db = sqlite_path(uri)
    return (db.resolve().parent / "mlartifacts").as_uri() if db is not None else None


def require_store(uri: str) -> None:
    """Reading a missing sqlite file would silently create an empty store: say so instead."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise KdflowError(
            f"no MLflow store at {db} ({uri}); run a stage first (dvc repro) or pass --uri"
        )


# Columns of MLflow's schema that hold artifact paths (all absolute, written at creation).
_PATH_COLUMNS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "model_versions": ("source", "storage_location"),
    "logged_models": ("artifact_location",),
}
# Experiment tag: the artifact root kdflow chose when it created the experiment. Only such a
# root is ever rewritten (relocate_store); one a user or a team chose is never touched.
CREATED_ROOT = "kdflow.created_artifact_root"


def _path(uri: str) -> str:
    return unquote(urlparse(uri).path)


def _moved_roots(con: sqlite3.Connection, new_root: str) -> list[str]:
    """The artifact roots kdflow created beside this store that are gone: the store moved."""
    rows = con.execute(
        "SELECT e.artifact_location FROM experiments e JOIN experiment_tags t "
        "ON t.experiment_id = e.experiment_id WHERE t.key = ? AND t.value = e.artifact_location",
        (CREATED_ROOT,),
    )
    local = [loc for (loc,) in rows if loc and loc != new_root and loc.startswith("file://")]
    return [loc for loc in local if not Path(_path(loc)).exists()]  # never a root that exists


def _backup(con: sqlite3.Connection, db: Path) -> Path:
    """A copy of the store before it is rewritten, where git ignores it (beside the artifacts)."""
    folder = db.resolve().parent / "mlartifacts" / ".kdflow-backups"
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{db.stem}-{time.strftime('%Y%m%d-%H%M%S')}-before-relocation.db"
    with sqlite3.connect(dest) as copy:
        con.backup(copy)
    return dest


def relocate_store(db: Path) -> int:
    """Point a moved repository's store at the artifacts beside it.

    MLflow records absolute artifact paths. Only a root kdflow created (experiment tag
    ``kdflow.created_artifact_root``) that no longer exists is rewritten, after a backup; a root
    that exists (a copy's original, a shared folder) is left as it is. Returns the rows rewritten.
    """
    if not db.is_file():
        return 0
    new_root = artifact_location(f"{SQLITE}{db}") or ""
    con = sqlite3.connect(db, timeout=60)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"experiments", "experiment_tags"} <= tables:
            return 0
        olds = _moved_roots(con, new_root)
        if not olds:
            return 0
        backup = _backup(con, db)
        changed = 0
        with con:  # one transaction: all paths move or none
            for old in olds:
                con.execute(
                    "UPDATE experiment_tags SET value = ? WHERE key = ? AND value = ?",
                    (new_root, CREATED_ROOT, old),
                )
                for before, after in ((old, new_root), (_path(old), _path(new_root))):
                    for table, cols in _PATH_COLUMNS.items():
                        for col in cols if table in tables else ():
                            cur = con.execute(
                                f"UPDATE {table} SET {col} = ? || substr({col}, ?) "
                                f"WHERE {col} = ? OR substr({col}, 1, ?) = ?",
                                (after, len(before) + 1, before, len(before) + 1, before + "/"),
                            )
                            changed += cur.rowcount
        print(
            f"kdflow: the MLflow store moved: artifacts of {', '.join(olds)} (gone) now read from "
            f"{new_root}; {changed} paths rewritten, backup {backup}",
            file=sys.stderr,
        )
        return changed
    except sqlite3.Error as exc:
        raise KdflowError(f"MLflow store {db} could not be read ({exc}); is it corrupt?") from None
    finally:
        con.close()


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (one line) when an http(s) tracking server does not answer."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout):
            pass
    except OSError as exc:
        raise KdflowError(
            f"MLflow tracking server {uri} is not reachable ({exc.strerror or exc}); start it "
            "(make ui / mlflow server) or point tracking.uri / MLFLOW_TRACKING_URI elsewhere"
        ) from None


def open_store(uri: str) -> Any:
    """Check a server answers, point a copied repository's store at itself, use the store."""
    check_reachable(uri)
    db = default_store(uri)
    if db is not None:
        relocate_store(db)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


def call(uri: str, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, with MLflow's failures as one line naming the store."""
    try:
        return fn(*args, **kwargs)
    except MlflowException as exc:
        msg = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise KdflowError(f"MLflow at {uri} failed to {what}: {msg}") from None
    except OSError as exc:
        raise KdflowError(f"MLflow at {uri} failed to {what}: {exc}") from None
