"""shards.json: the index of a sharded ingest output (ingest writes it, every reader checks it).

The shards are webdataset-style POSIX tar files: each image is two members, ``<sha256>.png``
(the resized image ingest keeps) and ``<sha256>.json`` (its labels), so any tar or webdataset
tool can read them. The index is what makes them addressable: for every shard its size, its
sha256 and md5 (the md5 is what S3 reports as the ETag of a single-part upload, so a shard in a
bucket is checked without reading it) and, for every image, where its PNG bytes start, how many
there are and their sha256. Readers fetch byte ranges of shards, never whole folders of files.

The split is not in the index: splits.csv names images by the manifest's ``path``
(``images/<shard>/<sha256>.png``), and the index resolves that path to bytes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from carinspect.contracts.base import Contract, ContractError, explain, read_json

INDEX_FILE = "shards.json"  # inside the ingest output's images/ folder


# One image inside a shard: (tar member name ``<sha256 of the original>.png``, offset of its
# PNG bytes, their size, their sha256). A tuple, not a model: an index of a million images
# must fit in a trainer's memory.
Member = tuple[str, int, int, str]
_SHA = re.compile(r"^[0-9a-f]{64}$")


class Shard(Contract):
    """One tar file of the dataset."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+\.tar$")
    bytes: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    md5: str = Field(pattern=r"^[0-9a-f]{32}$")
    # images per class of every task (one task: {"label": {...}} under its name)
    classes: dict[str, dict[str, int]]
    members: list[Member] = Field(min_length=1)

    @model_validator(mode="after")
    def _inside(self) -> Shard:
        for name, offset, size, sha in self.members:
            if offset < 0 or size < 1 or offset + size > self.bytes:
                raise ValueError(
                    f"{self.name}: member {name} (bytes {offset}..{offset + size}) is not inside "
                    f"the shard's {self.bytes} bytes"
                )
            if not _SHA.match(sha):
                raise ValueError(f"{self.name}: member {name} has no sha256 ({sha!r})")
        return self


class ShardIndex(Contract):
    """shards.json."""

    format: Literal["webdataset"] = "webdataset"
    version: Literal[1] = 1
    # "": the shards sit beside the index; "s3://bucket/prefix": they were uploaded there
    location: str = ""
    tasks: list[str] = Field(min_length=1)
    shards: list[Shard] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ShardIndex:
        names = [s.name for s in self.shards]
        if len(set(names)) != len(names):
            raise ValueError("a shard is listed twice")
        if self.location and not self.location.startswith("s3://"):
            raise ValueError(f"location {self.location!r} is neither empty nor s3://bucket/prefix")
        return self

    @property
    def images(self) -> int:
        """Images in every shard together."""
        return sum(len(s.members) for s in self.shards)

    @classmethod
    def read(cls, path: Path) -> ShardIndex:
        """Read and check ``path``; any problem raises :class:`ContractError` naming it."""
        raw = read_json(Path(path), "the shard index ingest writes")
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise ContractError(f"{path}: {explain(err)}") from None
