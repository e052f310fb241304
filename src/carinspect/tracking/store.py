"""The embedded MLflow store (``mlflow.db`` + ``mlruns/``) after its folder was moved or copied.

MLflow writes absolute artifact paths into mlflow.db (it resolves ``./mlruns`` when an experiment
is created; a relative ``artifact_location`` is made absolute too). In a copied or moved project
folder, the copy's runs and model versions still point at the original folder's ``mlruns``: new
runs write there, and downloads from a moved-away original come back empty without an error.

:func:`stale_root` detects that (the store's artifact paths live under another folder that holds
the store it was copied from, or no longer exists), and :func:`relocate` rewrites the paths to the
``mlruns`` next to the database, writing a new database file and renaming it over the old one.
Artifact locations elsewhere (a bigger disk, S3, ``mlflow-artifacts:``) are left alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from carinspect.errors import InputError

logger = logging.getLogger(__name__)

# (table, column) pairs holding artifact locations, in MLflow 3's schema
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)


class StoreError(InputError):
    """The store cannot be checked or relocated: the message says why."""


@dataclass(frozen=True)
class Relocation:
    """What :func:`relocate` changed."""

    old_root: Path
    new_root: Path
    rows: int


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for any other store)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///"))


def _local(location: str) -> Path | None:
    if location.startswith("file://"):
        location = location.removeprefix("file://")
    if not location.startswith("/"):
        return None
    return Path(location)


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _experiment_roots(db: Path) -> set[Path]:
    """The folders that hold the ``mlruns`` of the store's experiments (local ones only)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        if "experiments" not in _tables(con):
            return set()
        locations = [r[0] for r in con.execute("SELECT artifact_location FROM experiments")]
    finally:
        con.close()
    roots = set()
    for location in locations:
        path = _local(location or "")
        if path is not None and path.parent.name == "mlruns":
            roots.add(path.parent.parent)
    return roots


def _experiments(db: Path) -> set[tuple[str, str, str]]:
    """(id, name, creation time) of every experiment: what a copy of a store shares with it."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        if "experiments" not in _tables(con):
            return set()
        rows = con.execute("SELECT experiment_id, name, creation_time FROM experiments")
        return {(str(i), str(n), str(t)) for i, n, t in rows}
    finally:
        con.close()


def stale_root(db: Path) -> Path | None:
    """The other folder this store's artifact paths point into, if it was copied or moved.

    A root counts as stale when it is not the database's own folder and either no longer exists
    (this folder was moved) or holds the mlflow.db this one was copied from (the same
    experiments, down to their creation times). A root elsewhere that is not a store of its own
    (artifacts kept on another disk on purpose) is not stale.
    """
    db = Path(db).resolve()
    if not db.is_file():
        return None
    mine: set[tuple[str, str, str]] | None = None
    for root in sorted(_experiment_roots(db)):
        if root == db.parent:
            continue
        if not root.exists():
            return root
        other = root / "mlflow.db"
        if other.is_file():
            mine = _experiments(db) if mine is None else mine
            if mine & _experiments(other):
                return root
    return None


def check(tracking_uri: str) -> None:
    """Refuse an embedded store whose artifact paths point into another project folder."""
    db = sqlite_path(tracking_uri)
    if db is None:
        return
    db = db.resolve()
    old = stale_root(db)
    if old is not None:
        raise StoreError(
            f"{db}: its artifact paths point into {old / 'mlruns'}, not {db.parent / 'mlruns'} "
            "(the project folder was copied or moved); run `carinspect store relocate` in "
            f"{db.parent} to point them at this folder"
        )


def relocate(db: Path, old_root: Path | None = None) -> Relocation:
    """Rewrite artifact paths under ``old_root`` (detected when None) to the db's own folder.

    The rewritten database is written next to the old one and renamed over it, so a failure
    leaves the old file as it was.
    """
    db = Path(db).resolve()
    if not db.is_file():
        raise StoreError(f"{db}: no such MLflow database")
    new_root = db.parent
    if old_root is None:
        old_root = stale_root(db)
        if old_root is None:
            return Relocation(new_root, new_root, 0)
    old, new = str(Path(old_root)), str(new_root)
    tmp = db.with_name(f".{db.name}.relocate.tmp")
    shutil.copy2(db, tmp)
    rows = 0
    try:
        con = sqlite3.connect(tmp)
        try:
            tables = _tables(con)
            for table, column in LOCATION_COLUMNS:
                if table not in tables:
                    continue
                for prefix in (old + "/", "file://" + old + "/"):
                    replacement = ("file://" if prefix.startswith("file://") else "") + new + "/"
                    cur = con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # names from LOCATION_COLUMNS
                        f"WHERE substr({column}, 1, ?) = ?",
                        (replacement, len(prefix) + 1, len(prefix), prefix),
                    )
                    rows += cur.rowcount
            con.commit()
        finally:
            con.close()
        os.replace(tmp, db)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.debug("%s: %d artifact paths moved from %s to %s", db, rows, old, new)
    return Relocation(Path(old), new_root, rows)
