"""Pack ingest's resized images into webdataset tar shards and write their index.

Images go into shards in the order of their sha256, which is as good as random and the same on
every run: each shard holds every class in about its overall share, so a reader that takes
neighbouring images (one request per run of them) still sees mixed batches after its window
shuffle. A shard is named by its position and the start of its sha256
(``shard-000003-1a2b3c4d5e6f.tar``): a name is never reused for other bytes, so writing a new
dataset revision under the same ``s3://`` prefix cannot change the shards an older index (a
model version's lineage) points at, and a shard already there is not uploaded again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from carinspect.contracts.shards import Member, Shard, ShardIndex
from carinspect.data.storage.objects import LocalFolder, MissingObject, S3Prefix

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackItem:
    """One image to pack: its key (the original's sha256), its PNG bytes' reader and labels."""

    key: str
    read: Callable[[], bytes]
    labels: dict[str, str]  # task -> class ("" when the image is not labelled for that task)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    """A member header with nothing in it that changes between runs (mtime, owner)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


class _Open:
    """The shard being filled."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tar = tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.members: list[Member] = []
        self.counts: dict[str, Counter[str]] = {}

    def add(self, item: PackItem) -> None:
        png = item.read()
        info = _tarinfo(f"{item.key}.png", len(png))
        header = info.tobuf(tarfile.USTAR_FORMAT, self.tar.encoding, self.tar.errors)
        start = self.tar.offset + len(header)  # where the PNG bytes will begin
        self.tar.addfile(info, io.BytesIO(png))
        self.members.append((info.name, start, len(png), hashlib.sha256(png).hexdigest()))
        meta = json.dumps({"sha256": item.key, "labels": item.labels}, sort_keys=True).encode()
        self.tar.addfile(_tarinfo(f"{item.key}.json", len(meta)), io.BytesIO(meta))
        for task, label in item.labels.items():
            if label:
                self.counts.setdefault(task, Counter())[label] += 1

    @property
    def size(self) -> int:
        return int(self.tar.offset)


def write_shards(
    items: Iterable[PackItem],
    tasks: list[str],
    target_bytes: int,
    build: Path,
    store: LocalFolder | S3Prefix,
) -> tuple[ShardIndex, dict[str, str]]:
    """Pack ``items`` (in the order given) into shards of about ``target_bytes`` each.

    Shards are built in the local folder ``build`` and then moved (local) or uploaded (S3) to
    ``store``; returns the index and, for each key, the name of its shard.
    """
    build.mkdir(parents=True, exist_ok=True)
    shards: list[Shard] = []
    where: dict[str, str] = {}
    current: _Open | None = None

    def close(shard: _Open) -> None:
        shard.tar.close()
        sha, md5 = _digests(shard.path)
        name = f"shard-{len(shards):06d}-{sha[:12]}.tar"
        size = shard.path.stat().st_size
        if not _already_there(store, name, size, md5):
            store.put_file(name, shard.path)
        shard.path.unlink(missing_ok=True)
        shards.append(
            Shard(
                name=name,
                bytes=size,
                sha256=sha,
                md5=md5,
                classes={t: dict(sorted(c.items())) for t, c in sorted(shard.counts.items())},
                members=shard.members,
            )
        )
        where.update({m[0].removesuffix(".png"): name for m in shard.members})
        logger.debug("shard %s: %d images, %.1f MiB", name, len(shard.members), size / 2**20)

    for item in items:
        if current is None:
            current = _Open(build / f".building-{len(shards):06d}.tar")
        current.add(item)
        if current.size >= target_bytes:
            close(current)
            current = None
    if current is not None:
        close(current)
    index = ShardIndex(
        location=store.uri if isinstance(store, S3Prefix) else "", tasks=tasks, shards=shards
    )
    return index, where


def _already_there(store: LocalFolder | S3Prefix, name: str, size: int, md5: str) -> bool:
    """An S3 shard of the same name, size and md5 (the name holds the sha256): skip the upload."""
    if not isinstance(store, S3Prefix):
        return False
    try:
        there, etag = store.stat(name)
    except MissingObject:
        return False
    return there == size and etag == md5
