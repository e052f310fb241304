"""Byte ranges of named objects in a local folder or under an ``s3://bucket/prefix``.

Shards are read a range at a time (the images a reader needs, one request per run of
neighbouring images), so one interface serves a local disk and a bucket. S3 goes through
boto3's standard credential chain and honours ``AWS_ENDPOINT_URL`` (MinIO, moto). Every boto3
error is turned into an :class:`ObjectError` that names the prefix, or the object, and says
which of the usual causes it is: credentials refused, no such bucket, no such object, no route.

A location is picklable and safe to use after a fork: the S3 client is made lazily in the
process (and DataLoader worker) that uses it, never shared across one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from carinspect.errors import InputError

# S3 error codes that mean "these credentials do not work here"
_REFUSED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "Forbidden",
    "403",
}
_MISSING = {"NoSuchKey", "404", "NotFound"}


class ObjectError(InputError):
    """An object or prefix cannot be read or written; the message names it and the cause."""


class MissingObject(ObjectError):
    """The object is not there."""


class Location(Protocol):
    """Where a dataset's shards are kept."""

    uri: str

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of object ``name``."""
        ...

    def stat(self, name: str) -> tuple[int, str | None]:
        """Size of ``name`` and, where the store reports it, the md5 of its content."""
        ...

    def put_file(self, name: str, path: Path) -> None:
        """Store the local file ``path`` as ``name`` (complete or not at all)."""
        ...

    def check(self) -> None:
        """Fail now, naming the location, if it cannot be reached with these credentials."""
        ...


class LocalFolder:
    """Objects are the files of one folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of file ``name``."""
        path = self.root / name
        try:
            with path.open("rb") as fh:
                fh.seek(start)
                data = fh.read(end - start)
        except FileNotFoundError:
            raise MissingObject(f"{path}: not found") from None
        if len(data) != end - start:
            raise ObjectError(f"{path}: ends at byte {start + len(data)}, before {end}")
        return data

    def stat(self, name: str) -> tuple[int, str | None]:
        """Size of file ``name`` (a file system keeps no md5)."""
        try:
            return (self.root / name).stat().st_size, None
        except FileNotFoundError:
            raise MissingObject(f"{self.root / name}: not found") from None

    def put_file(self, name: str, path: Path) -> None:
        """Move ``path`` (on the same file system) into the folder as ``name``."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.replace(path, self.root / name)

    def check(self) -> None:
        """The folder exists."""
        if not self.root.is_dir():
            raise ObjectError(f"{self.root}: no such folder")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``: the prefix empty or ending in ``/``."""
    if not uri.startswith("s3://"):
        raise ObjectError(f"{uri!r} is not an s3://bucket/prefix")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ObjectError(f"{uri!r}: no bucket name")
    return bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""


def s3_client(uri: str) -> Any:
    """A boto3 S3 client: every part of carinspect that speaks to S3 gets its client here.

    The endpoint and credentials are boto3's own chain (AWS_ENDPOINT_URL for MinIO); retries
    are bounded and the pool fits parallel range reads. ``uri`` only names the place in the
    error when boto3 is missing.
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ObjectError(
            f"{uri}: reading s3:// needs boto3, which this install lacks (pip install "
            "'carinspect[pipeline]', or use the pipeline image)"
        ) from None
    config = Config(max_pool_connections=32, retries={"max_attempts": 5, "mode": "standard"})
    return boto3.client("s3", config=config)


class S3Prefix:
    """Objects are the keys under ``s3://bucket/prefix/``."""

    def __init__(self, uri: str) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self._client: Any = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_pid": -1}

    @property
    def client(self) -> Any:
        """The boto3 client of this process (a forked DataLoader worker makes its own)."""
        if self._client is None or self._pid != os.getpid():
            self._client = s3_client(self.uri)
            self._pid = os.getpid()
        return self._client

    def _key(self, name: str) -> str:
        return self.prefix + name

    def _explain(self, err: Exception, name: str | None = None) -> ObjectError:
        """One clear error for a boto3 exception, naming the prefix (or the object)."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        where = f"s3://{self.bucket}/{self._key(name)}" if name else self.uri
        if isinstance(err, NoCredentialsError):
            return ObjectError(
                f"{where}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or mount the Secret that holds them)"
            )
        if isinstance(err, EndpointConnectionError):
            return ObjectError(f"{where}: cannot reach the S3 endpoint ({err})")
        if isinstance(err, ClientError):
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in _REFUSED:
                return ObjectError(
                    f"{self.uri}: S3 refused these credentials ({code}); check "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy"
                )
            if code == "NoSuchBucket":
                return ObjectError(f"{self.uri}: bucket {self.bucket!r} does not exist")
            if code in _MISSING:
                return MissingObject(f"{where}: not found")
            return ObjectError(f"{where}: {code or type(err).__name__}: {err}")
        return ObjectError(f"{where}: {type(err).__name__}: {err}")

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of object ``name``: one ranged GET."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self._key(name), Range=f"bytes={start}-{end - 1}"
            )
            data: bytes = response["Body"].read()
        except (BotoCoreError, ClientError) as err:
            raise self._explain(err, name) from None
        if len(data) != end - start:
            raise ObjectError(
                f"s3://{self.bucket}/{self._key(name)}: {len(data)} bytes from {start}, "
                f"not {end - start} (the object is shorter than the index says)"
            )
        return data

    def stat(self, name: str) -> tuple[int, str | None]:
        """Size and md5 (the ETag of a single-part upload) of ``name``: one HEAD."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except (BotoCoreError, ClientError) as err:
            raise self._explain(err, name) from None
        etag = str(head.get("ETag", "")).strip('"')
        # a single-part upload's ETag is its md5; a multipart one has a -N suffix and is not
        return int(head["ContentLength"]), etag if "-" not in etag and len(etag) == 32 else None

    def put_file(self, name: str, path: Path) -> None:
        """Upload ``path`` as ``name`` in one PUT."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            with Path(path).open("rb") as fh:  # one PUT: S3 stores all of it or none of it
                self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=fh)
        except (BotoCoreError, ClientError) as err:
            raise self._explain(err, name) from None

    def read(self, name: str) -> bytes:
        """The whole of object ``name``: one GET."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(name))[
                "Body"
            ].read()
        except (BotoCoreError, ClientError) as err:
            raise self._explain(err, name) from None
        return body

    def put_bytes(self, name: str, data: bytes) -> None:
        """Store ``data`` as ``name`` in one PUT (all of it or none of it)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)
        except (BotoCoreError, ClientError) as err:
            raise self._explain(err, name) from None

    def exists(self, name: str) -> bool:
        """Whether object ``name`` is there (one HEAD)."""
        try:
            self.stat(name)
        except MissingObject:
            return False
        return True

    def delete(self, name: str) -> None:
        """Remove object ``name`` (no error when it is not there)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except (BotoCoreError, ClientError) as err:
            raise self._explain(err, name) from None

    def sizes(self) -> dict[str, int]:
        """Every object under the prefix (relative name) with its size in bytes."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            found = {
                o["Key"][len(self.prefix) :]: int(o["Size"])
                for page in pages
                for o in page.get("Contents", [])
                if not o["Key"].endswith("/")
            }
        except (BotoCoreError, ClientError) as err:
            raise self._explain(err) from None
        return dict(sorted(found.items()))

    def names(self) -> list[str]:
        """Every object under the prefix, relative to it, sorted."""
        return list(self.sizes())

    def get_file(self, name: str, path: Path) -> None:
        """Download ``name`` to ``path`` through a temporary file (complete or absent)."""
        from botocore.exceptions import BotoCoreError, ClientError

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            self.client.download_file(self.bucket, self._key(name), str(tmp))
            os.replace(tmp, path)
        except (BotoCoreError, ClientError) as err:
            tmp.unlink(missing_ok=True)
            raise self._explain(err, name) from None

    def check(self) -> None:
        """List one key under the prefix: the bucket exists and takes these credentials."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except (BotoCoreError, ClientError) as err:
            raise self._explain(err) from None


def upload_tree(folder: Path, uri: str) -> int:
    """Copy every file under ``folder`` to the prefix ``uri`` (same relative names)."""
    prefix = S3Prefix(uri)
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    for path in files:
        prefix.put_file(path.relative_to(folder).as_posix(), path)
    return len(files)


def remove_tree(uri: str) -> int:
    """Delete every object under the prefix ``uri``; returns how many there were."""
    from botocore.exceptions import BotoCoreError, ClientError

    prefix = S3Prefix(uri)
    names = prefix.names()
    for i in range(0, len(names), 1000):  # DeleteObjects takes 1000 keys a call
        batch = [{"Key": prefix.prefix + n} for n in names[i : i + 1000]]
        try:
            prefix.client.delete_objects(Bucket=prefix.bucket, Delete={"Objects": batch})
        except (BotoCoreError, ClientError) as err:
            raise prefix._explain(err) from None
    return len(names)


def download_tree(uri: str, folder: Path) -> int:
    """Copy every object under the prefix ``uri`` into ``folder``; an empty prefix raises."""
    prefix = S3Prefix(uri)
    names = prefix.names()
    if not names:
        raise MissingObject(f"{prefix.uri}: no objects")
    for name in names:
        prefix.get_file(name, Path(folder) / name)
    return len(names)


def open_location(uri: str, local: Path) -> LocalFolder | S3Prefix:
    """``uri`` "" is the folder ``local``; ``s3://bucket/prefix`` is that prefix."""
    return S3Prefix(uri) if uri else LocalFolder(local)
