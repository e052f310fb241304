"""`carinspect review push` and `pull`: a feedback log into a Label Studio project, and back.

push: every kept photo becomes one task (known by its content hash, so pushing again adds only
new photos), ordered by the feedback policy's score (the project shows tasks in import order),
with the model's answer as a pre-annotation. Label Studio reaches the photos through a storage
connection it is given: the log's folder (under Label Studio's LOCAL_FILES_DOCUMENT_ROOT) or its
S3 prefix.

pull: the finished annotations go through the same validated import as ``carinspect feedback
import`` (every row checked, the dataset rewritten as a staged whole, then ``dvc add``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from carinspect.data.intake.feedback import ImportResult, Kept, import_rows, read_log
from carinspect.data.storage.objects import ObjectError, parse_s3_uri
from carinspect.review.client import LabelStudio, ReviewError
from carinspect.review.tasks import classes_of, label_config, reviewed, task_of

logger = logging.getLogger(__name__)

DESCRIPTION = "Photos carinspect serve kept for review (most worth a look first)"
CHUNK = 500  # tasks per import request


@dataclass(frozen=True)
class PushResult:
    """What a push added to the project."""

    project: int
    title: str
    added: int
    already: int  # photos the project had from an earlier push
    url: str  # the project's page


def push(
    ls: LabelStudio, log: str, title: str, local_root: Path | None, most: int | None = None
) -> PushResult:
    """The kept photos of ``log`` as tasks of project ``title`` (created when missing)."""
    kept = sorted(read_log(log).values(), key=lambda k: (-k.record.score, k.record.received_at))
    config = label_config(classes_of([k.record for k in kept]))
    project = ls.project(title)
    if project is None:
        project = ls.create_project(title, config, DESCRIPTION)
        logger.info("created Label Studio project %r (%d)", title, project["id"])
    elif project.get("label_config") != config:
        ls.update_config(project["id"], config)  # new classes: Label Studio checks the labels
    pid = int(project["id"])
    image = _connect(ls, pid, log, local_root)
    known = {str(t.get("data", {}).get("sha256")) for t in ls.tasks(pid)}
    fresh = [k for k in kept if k.sha256 not in known][:most]
    tasks = [task_of(k.record, image(k)) for k in fresh]
    added = sum(ls.import_tasks(pid, tasks[i : i + CHUNK]) for i in range(0, len(tasks), CHUNK))
    return PushResult(pid, title, added, len(kept) - len(fresh), f"{ls.url}/projects/{pid}/data")


def pull(
    ls: LabelStudio,
    title: str,
    log: str,
    folder: Path,
    resolve: str = "refuse",
    dvc: bool = True,
    golden: tuple[Path, float] | None = None,
) -> ImportResult:
    """The finished annotations of project ``title`` into the feedback dataset ``folder``.

    ``golden`` (folder, share): that share of the reviewed photos, chosen by content hash (so a
    photo always falls on the same side), goes to the golden set instead: photos no version
    trains on, which the promotion gate judges candidate and champion on.
    """
    project = ls.project(title)
    if project is None:
        raise ReviewError(f"{ls.url}: no project titled {title!r} (`carinspect review push` first)")
    done = reviewed(ls.export(int(project["id"])), resolve)
    rows = []
    for r in done:
        if len(r.labels) != 1:
            raise ReviewError(
                f"{r.where} (photo {r.sha256[:12]}) is labelled for {sorted(r.labels) or 'no task'}: "
                "the feedback dataset holds one task's classes"
            )
        rows.append((r.where, r.sha256, next(iter(r.labels.values()))))
    source = f"Label Studio project {title!r} ({ls.url})"
    kept = read_log(log)
    if golden is None or golden[1] <= 0:
        return import_rows(source, rows, kept, folder, dvc)
    held = [r for r in rows if in_golden(r[1], golden[1])]
    trained = [r for r in rows if not in_golden(r[1], golden[1])]
    import_rows(source, held, kept, golden[0], dvc)
    return import_rows(source, trained, kept, folder, dvc)


def in_golden(sha256: str, share: float) -> bool:
    """Whether the photo with this content hash belongs to the golden set's ``share``."""
    return int(sha256[:8], 16) / 0x1_0000_0000 < share


def _connect(ls: LabelStudio, project: int, log: str, local_root: Path | None) -> Any:
    """Give the project a storage connection to the log; how a kept photo's URL is made."""
    if log.startswith("s3://"):
        return _connect_s3(ls, project, log)
    if local_root is None:
        raise ReviewError(
            f"--log {log}: a folder log needs Label Studio's LOCAL_FILES_DOCUMENT_ROOT (--local-root):"
            " Label Studio serves local photos only from under it, with LOCAL_FILES_SERVING_ENABLED"
        )
    root, folder = Path(local_root).resolve(), Path(log).resolve()
    if not folder.is_relative_to(root):
        raise ReviewError(
            f"--log {log}: not under Label Studio's LOCAL_FILES_DOCUMENT_ROOT {root}, so Label "
            "Studio cannot serve its photos"
        )
    if not any(Path(s.get("path", "")) == folder for s in ls.storages("localfiles", project)):
        ls.add_storage("localfiles", {"project": project, "title": "carinspect feedback log",
                                      "path": str(folder), "use_blob_urls": True,
                                      "regex_filter": r".*\.(jpg|jpeg|png|webp|bmp|tif|tiff)$"})  # fmt: skip

    def image(kept: Kept) -> str:
        return "/data/local-files/?d=" + quote((folder / kept.photo).relative_to(root).as_posix())

    return image


def _connect_s3(ls: LabelStudio, project: int, log: str) -> Any:
    try:
        bucket, prefix = parse_s3_uri(log)
    except ObjectError as err:
        raise ReviewError(f"--log {err}") from None
    prefix = prefix.strip("/")
    have = ls.storages("s3", project)
    if not any(s.get("bucket") == bucket and (s.get("prefix") or "") == prefix for s in have):
        body: dict[str, Any] = {"project": project, "title": "carinspect feedback log",
                                "bucket": bucket, "prefix": prefix, "use_blob_urls": True,
                                "presign": True, "presign_ttl": 60}  # fmt: skip
        for key, env in (("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
                         ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                         ("region_name", "AWS_DEFAULT_REGION"),
                         ("s3_endpoint", "AWS_ENDPOINT_URL")):  # fmt: skip
            if os.environ.get(env):
                body[key] = os.environ[env]
        ls.add_storage("s3", body)

    def image(kept: Kept) -> str:
        return f"s3://{bucket}/{prefix + '/' if prefix else ''}{kept.photo}"

    return image
