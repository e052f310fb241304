"""Where ingest's images are and how to read them: a per-file cache or shards (local or S3).

Both stores take the paths that splits.csv names (``<ingest>/images/...``) and return the PNG
bytes ingest wrote, so the Dataset contract does not change with the format. :func:`open_store`
tells them apart by the shard index in ``images/``.

A :class:`ShardStore` keeps the index as flat arrays (shard, offset, size, sha256 per image),
reads runs of neighbouring images with one request each, checks every image's sha256 as it
arrives, and :meth:`ShardStore.verify` checks every shard before a stage starts, so a missing,
truncated or replaced shard, or credentials the bucket refuses, stop a run before its first step.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from carinspect.contracts.base import ContractError
from carinspect.contracts.shards import INDEX_FILE, ShardIndex
from carinspect.data.storage.objects import LocalFolder, MissingObject, ObjectError, open_location
from carinspect.errors import InputError

logger = logging.getLogger(__name__)
T = TypeVar("T")

IMAGES = "images"  # the ingest output's image folder: per-file cache, or shards + their index
MAX_GAP = 256 * 1024  # neighbouring images closer than this are fetched in one request
MAX_RUN = 64 * 1024 * 1024  # ... up to this many bytes per request

# the stored bytes of one image: a shard's images are views into the one buffer their request
# filled (no copy each, and the buffer goes back to the OS as one piece when they are done)
Blob = bytes | memoryview


class ShardError(InputError):
    """A shard is missing, corrupt or unreadable; the message names the shard (or the prefix)."""


class ImageStore(Protocol):
    """The bytes behind the image paths of a splits.csv."""

    root: Path

    def read_many(self, paths: Sequence[Path], threads: int = 8) -> list[Blob]:
        """The stored bytes of each of ``paths``, in order."""
        ...

    def missing(self, paths: Sequence[Path]) -> Path | None:
        """The first of ``paths`` that the store does not hold, if any."""
        ...

    def verify(self) -> None:
        """Raise, naming what is wrong, unless every stored file is there and intact."""
        ...


class FileStore:
    """The per-file cache: ``images/<aa>/<sha256>.png`` under the ingest folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def read_many(self, paths: Sequence[Path], threads: int = 8) -> list[Blob]:
        """The bytes of each file of ``paths``."""
        if len(paths) == 1 or threads <= 1:
            return [Path(p).read_bytes() for p in paths]
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            return list(pool.map(lambda p: Path(p).read_bytes(), paths))

    def missing(self, paths: Sequence[Path]) -> Path | None:
        """The first of ``paths`` that is not a file."""
        return next((p for p in paths if not Path(p).is_file()), None)

    def verify(self) -> None:
        """The per-file cache is checked file by file (:meth:`missing`) when it is loaded."""


class ShardStore:
    """Images in webdataset tar shards, located through ``images/shards.json``."""

    def __init__(self, root: Path, index: ShardIndex) -> None:
        self.root = Path(root)
        self.index_path = self.root / IMAGES / INDEX_FILE
        self.location_uri = index.location
        self.location = open_location(index.location, self.root / IMAGES)
        self.shards = [s.name for s in index.shards]
        self._expected = {s.name: (s.bytes, s.sha256, s.md5) for s in index.shards}
        rows = [
            (i, f"{IMAGES}/{s.name}/{m[0]}", m[1], m[2], m[3])
            for i, s in enumerate(index.shards)
            for m in s.members
        ]
        self._row = {rel: n for n, (_, rel, _, _, _) in enumerate(rows)}
        self.shard_of = np.array([r[0] for r in rows], dtype=np.int32)
        self.offset = np.array([r[2] for r in rows], dtype=np.int64)
        self.size = np.array([r[3] for r in rows], dtype=np.int64)
        self.sha = np.frombuffer(b"".join(bytes.fromhex(r[4]) for r in rows), dtype=np.uint8)
        self.sha = self.sha.reshape(len(rows), 32)

    @property
    def uri(self) -> str:
        """Where the shards are: a local folder or an s3:// prefix."""
        return self.location.uri

    def rows(self, paths: Sequence[Path]) -> np.ndarray:
        """Row of each path in the index's arrays; an unknown path raises naming it."""
        out = np.empty(len(paths), dtype=np.int64)
        for i, p in enumerate(paths):
            rel = self._rel(p)
            row = self._row.get(rel)
            if row is None:
                raise ShardError(f"{self.index_path}: has no image {rel} (run ingest again)")
            out[i] = row
        return out

    def missing(self, paths: Sequence[Path]) -> Path | None:
        """The first of ``paths`` that the index does not list."""
        try:
            self.rows(paths)
        except ShardError:
            return next(p for p in paths if self._rel(p) not in self._row)
        return None

    def _rel(self, p: Path) -> str:
        """``images/<shard>/<member>``: the path as the manifest spells it."""
        try:
            return Path(p).relative_to(self.root).as_posix()
        except ValueError:
            return Path(p).as_posix()

    def read_many(self, paths: Sequence[Path], threads: int = 8) -> list[Blob]:
        """The PNG bytes of each of ``paths`` (see :meth:`read_rows`)."""
        return self.read_rows(self.rows(paths), threads)

    def read_rows(self, rows: np.ndarray, threads: int = 8) -> list[Blob]:
        """The PNG bytes of index rows ``rows`` (repeats allowed), in order, each one checked.

        Rows of one shard that lie close together are fetched by one range request.
        """
        unique = np.unique(rows)
        order = unique[np.lexsort((self.offset[unique], self.shard_of[unique]))]
        runs: list[list[int]] = []
        for r in order.tolist():
            if runs:
                last = runs[-1]
                start = int(self.offset[last[0]])
                end = int(self.offset[last[-1]] + self.size[last[-1]])
                if (
                    self.shard_of[r] == self.shard_of[last[0]]
                    and self.offset[r] - end <= MAX_GAP
                    and self.offset[r] + self.size[r] - start <= MAX_RUN
                ):
                    last.append(r)
                    continue
            runs.append([r])
        got: dict[int, Blob] = {}

        def fetch(run: list[int]) -> None:
            shard = self.shards[int(self.shard_of[run[0]])]
            start = int(self.offset[run[0]])
            end = int(self.offset[run[-1]] + self.size[run[-1]])
            view = memoryview(self._ask(shard, self.location.read_range, start, end))
            for r in run:
                a = int(self.offset[r]) - start
                piece = view[a : a + int(self.size[r])]
                if hashlib.sha256(piece).digest() != self.sha[r].tobytes():
                    raise ShardError(
                        f"shard {shard} in {self.uri}: the image at bytes {self.offset[r]}.."
                        f"{self.offset[r] + self.size[r]} does not match its sha256 in "
                        f"{self.index_path} (the shard is corrupt or was replaced)"
                    )
                got[r] = piece

        if len(runs) == 1 or threads <= 1:
            for run in runs:
                fetch(run)
        else:
            with ThreadPoolExecutor(max_workers=min(threads, len(runs))) as pool:
                list(pool.map(fetch, runs))
        return [got[r] for r in rows.tolist()]

    def _ask(self, shard: str, call: Callable[..., T], *args: int) -> T:
        """``call(shard, *args)`` on the location, its failure said as a :class:`ShardError`."""
        try:
            return call(shard, *args)
        except MissingObject:
            raise ShardError(
                f"{self.index_path} names shard {shard}, which is not in {self.uri}"
            ) from None
        except ObjectError as err:
            raise ShardError(f"shard {shard}: {err}") from None

    def verify(self, threads: int = 16) -> None:
        """Every shard is there with the size (and the md5 or sha256) the index records.

        S3: one HEAD per shard; a single-part upload's ETag is its md5, so a replaced or
        re-uploaded shard is caught without reading it. Local: the files' sha256 (read once).
        """
        try:
            self.location.check()
        except ObjectError as err:
            raise ShardError(f"{self.index_path}: shards at {err}") from None

        def check(name: str) -> None:
            size, sha, md5 = self._expected[name]
            there, etag = self._ask(name, self.location.stat)
            if there != size:
                raise ShardError(
                    f"shard {name} in {self.uri} is {there} bytes, the index says {size} "
                    "(truncated or replaced: run ingest again)"
                )
            if etag is not None and etag != md5:
                raise ShardError(
                    f"shard {name} in {self.uri}: its content (md5 {etag}) is not the one "
                    f"indexed (md5 {md5}): the object was replaced; run ingest again"
                )
            local = isinstance(self.location, LocalFolder)
            if local and _file_sha256(self.location.root / name) != sha:  # type: ignore[union-attr]
                raise ShardError(
                    f"shard {name} in {self.uri}: its sha256 is not the one indexed "
                    "(the file is corrupt): run ingest again"
                )

        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(self.shards)))) as pool:
            list(pool.map(check, self.shards))
        logger.debug("%d shards in %s verified", len(self.shards), self.uri)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_store(ingest_dir: Path) -> FileStore | ShardStore:
    """The store of an ingest output folder: shards when ``images/shards.json`` exists.

    A stage asks for it several times (each split, the checks before training); the index of
    a large dataset is read once, again only when the file changes.
    """
    index_path = Path(ingest_dir) / IMAGES / INDEX_FILE
    try:
        seen = index_path.stat()
    except FileNotFoundError:
        return FileStore(Path(ingest_dir))
    parsed = _shard_store(str(ingest_dir), str(index_path), seen.st_mtime_ns, seen.st_size)
    store = copy.copy(parsed)  # the arrays shared; a location (and S3 client) of its own
    store.location = open_location(parsed.location_uri, store.root / IMAGES)
    return store


@functools.lru_cache(maxsize=4)
def _shard_store(ingest_dir: str, index_path: str, mtime_ns: int, size: int) -> ShardStore:
    """The store of one version of an index (the file's time and size are part of the key)."""
    try:
        return ShardStore(Path(ingest_dir), ShardIndex.read(Path(index_path)))
    except ContractError as err:
        raise ShardError(f"shard index {err}") from None
