"""``carinspect feedback import``: a reviewer's labels for served photos become a dataset revision.

The photos come from a feedback log (what ``carinspect serve`` keeps under FEEDBACK_DIR: each
photo under its content hash, beside a record of the answer). The labels come as

- a CSV with a hash column (``sha256`` or ``hash``) and a ``label`` column, one row per photo; or
- a folder with one subfolder per class, the log's photos sorted into them by hand (any names:
  each file is known by its content hash).

Every row is checked before anything is written: a hash the log does not hold, a class the model
that answered the photo does not know, or one photo given two labels refuses the whole import,
naming the rows. The dataset is ``<data.feedback>/photos/<class>/<sha256>.<ext>``; it is rewritten
as a whole (a staged copy renamed into place), so an interrupted import leaves the previous
revision as it was. A photo labelled again moves to its new class. In a DVC project the folder
is then ``dvc add``-ed: its ``photos.dvc`` is the revision to commit, and ingest reads it beside
``data.source``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from carinspect.contracts.base import ContractError
from carinspect.contracts.feedback import SUFFIX as RECORD
from carinspect.contracts.feedback import FeedbackRecord, parse_record
from carinspect.data.decoding.fingerprint import sha256_bytes
from carinspect.data.intake.sources import (
    ResolvedSource,
    SourceError,
    SourceItem,
    folder_source,
    open_source,
    s3_objects,
)
from carinspect.data.storage.objects import ObjectError, parse_s3_uri
from carinspect.errors import InputError
from carinspect.io import staged_dir, write_bytes_atomic

logger = logging.getLogger(__name__)

PHOTOS = "photos"  # the DVC-tracked part of a feedback dataset folder
SHOWN = 8  # problem rows named in an error, at most


class FeedbackError(InputError):
    """A label file or feedback log that cannot be imported as it is."""


@dataclass(frozen=True)
class Kept:
    """One photo of the feedback log: its record and how to read its bytes."""

    sha256: str
    record: FeedbackRecord
    read: Callable[[], bytes]
    ext: str
    photo: str  # the photo's name relative to the log (``3f/3f9c...e1.jpg``)


@dataclass(frozen=True)
class ImportResult:
    """What an import changed in the dataset."""

    folder: Path
    added: int
    relabelled: int
    unchanged: int
    classes: dict[str, int]
    dvc_file: Path | None

    def describe(self) -> str:
        """The import in one line, as `feedback import` and `review pull` print it."""
        line = (
            f"{self.added} added, {self.relabelled} relabelled, {self.unchanged} unchanged: "
            f"{self.folder} now holds {self.classes}"
        )
        return line + (f"; commit {self.dvc_file} to record this revision" if self.dvc_file else "")


@contextlib.contextmanager
def open_feedback(
    folder: str, source: ResolvedSource, new_classes: bool = False
) -> Iterator[list[SourceItem]]:
    """The feedback dataset's photos where ``folder`` is: a local folder, or a revision of it.

    ``dvc://<repo>@<rev>#<folder>`` reads ``<folder>/photos`` at that git revision through DVC
    (what a KFP run is given: its pod has no DVC workspace), ``s3://bucket/prefix`` reads
    ``prefix/photos/<class>/``; the photos stay readable until the block ends.
    """
    if folder.startswith(("dvc://", "s3://")):
        with open_source(f"{folder.rstrip('/')}/{PHOTOS}") as resolved:
            yield _checked_items(folder, source, resolved.items, new_classes)
        return
    yield feedback_items(folder, source, new_classes)


def feedback_items(
    folder: str, source: ResolvedSource, new_classes: bool = False
) -> list[SourceItem]:
    """The labelled photos of a feedback dataset (``<folder>/photos/<class>/``), for ``source``.

    None when the folder has no photos yet. Each photo carries one label, so a source that
    trains several tasks together cannot take them. A class that only the feedback has (a
    feedback folder from another project) is refused, naming it, unless ``new_classes``.
    """
    photos = Path(folder) / PHOTOS
    if not folder or not photos.is_dir() or not any(p.is_dir() for p in photos.iterdir()):
        return []
    return _checked_items(folder, source, folder_source(photos, str(photos)).items, new_classes)


def _checked_items(
    folder: str, source: ResolvedSource, items: list[SourceItem], new_classes: bool
) -> list[SourceItem]:
    """``items`` when ``source`` can take them (one task; no class of their own), else refused."""
    photos = f"{folder.rstrip('/')}/{PHOTOS}"
    if len(source.tasks) > 1:
        raise SourceError(
            f"data.feedback {folder!r} holds one label per photo, but data.source "
            f"{source.uri!r} trains the tasks {source.tasks} together: leave {photos} out"
        )
    known = {i.label for i in source.items}
    extra = sorted({i.label for i in items} - known)
    if extra and not new_classes:
        raise SourceError(
            f"data.feedback {folder!r} has class(es) {extra} that data.source {source.uri!r} "
            f"does not ({sorted(known)}): remove {photos}/<class> for them, or set "
            "data.feedback_new_classes: true to train on them"
        )
    return items


def _listing(log: str) -> list[tuple[str, Callable[[], bytes]]]:
    """(name relative to the log, reader) for every file of a local or s3:// feedback log."""
    if log.startswith("s3://"):
        try:
            prefix = parse_s3_uri(log)[1]
        except ObjectError as err:
            raise FeedbackError(f"--log {err}") from None
        return [(key[len(prefix) :], read) for key, read in s3_objects(log, "--log")]
    root = Path(log)
    if not root.is_dir():
        raise FeedbackError(f"--log {log}: not a folder (the FEEDBACK_DIR serving wrote)")
    return [
        (p.relative_to(root).as_posix(), p.read_bytes)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]


def read_log(log: str) -> dict[str, Kept]:
    """The photos of a feedback log by content hash (records without a photo are skipped)."""
    files = dict(_listing(log))
    photos = {n.rsplit(".", 1)[0]: n for n in files if not n.endswith(RECORD) and "." in n}
    kept: dict[str, Kept] = {}
    for name, read in files.items():
        if not name.endswith(RECORD) or "/" not in name:
            continue
        stem = name[: -len(RECORD)]
        photo = photos.get(stem)
        if photo is None:
            continue
        try:
            record = parse_record(read(), f"--log {log}: {name}")
        except ContractError as err:
            raise FeedbackError(str(err)) from None
        sha = record.sha256
        if sha != stem.rsplit("/", 1)[-1]:
            raise FeedbackError(f"--log {log}: {name} records hash {sha!r}, not its own name")
        kept[sha] = Kept(sha, record, files[photo], Path(photo).suffix, photo.lstrip("/"))
    if not kept:
        raise FeedbackError(f"--log {log}: no kept photos here (FEEDBACK_DIR of carinspect serve)")
    return kept


def _csv_labels(path: Path) -> list[tuple[str, str, str]]:
    """(where, hash, label) per row of a reviewer's CSV."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise FeedbackError(f"{path}: cannot be read as text ({err})") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    key = next((f for f in ("sha256", "hash") if f in fields), None)
    if key is None or "label" not in fields:
        raise FeedbackError(
            f"{path}: expected the columns sha256 (or hash) and label, found {fields}"
        )
    rows = []
    for n, raw in enumerate(reader, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
        rows.append((f"row {n}", row[key].lower(), row["label"]))
    if not rows:
        raise FeedbackError(f"{path}: no rows under the header")
    return rows


def _folder_labels(root: Path) -> list[tuple[str, str, str]]:
    """(where, hash, label) per file of a folder sorted by hand into class subfolders."""
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(p for p in class_dir.rglob("*") if p.is_file()):
            if path.name.startswith(".") or path.suffix == RECORD:
                continue
            rows.append(
                (path.relative_to(root).as_posix(), sha256_bytes(path.read_bytes()), class_dir.name)
            )
    if not rows:
        raise FeedbackError(f"{root}: no photos in class subfolders (expected <class>/<photo>)")
    return rows


def read_labels(labels: Path) -> list[tuple[str, str, str]]:
    """The reviewer's labels: a CSV of hash,label or a folder sorted into class subfolders."""
    labels = Path(labels)
    if labels.is_dir():
        return _folder_labels(labels)
    if labels.is_file():
        return _csv_labels(labels)
    raise FeedbackError(
        f"{labels}: no such file or folder (a CSV of sha256,label or a sorted folder)"
    )


def _classes(record: FeedbackRecord) -> list[str]:
    """The classes of the model that answered (single task: its one task's)."""
    tasks = record.classes
    if len(tasks) != 1:
        raise FeedbackError(
            f"photo {record.sha256} was answered by a model with tasks {list(tasks)}: "
            "feedback import labels single-task models"
        )
    return list(next(iter(tasks.values())))


def _refuse(labels: str | Path, problems: list[str]) -> None:
    shown = "; ".join(problems[:SHOWN]) + (
        f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    )
    raise FeedbackError(f"{labels}: {len(problems)} row(s) refused, nothing imported: {shown}")


def checked(
    labels: str | Path, rows: list[tuple[str, str, str]], log: dict[str, Kept]
) -> dict[str, str]:
    """``{hash: label}``, every row known and consistent, or one error naming the bad rows.

    ``labels`` names where the rows came from (a file, a Label Studio project) in the error.
    """
    problems: list[str] = []
    chosen: dict[str, tuple[str, str]] = {}
    for where, sha, label in rows:
        if sha not in log:
            problems.append(f"{where}: hash {sha[:12] or '(empty)'} is not in the feedback log")
            continue
        classes = _classes(log[sha].record)
        if label not in classes:
            problems.append(f"{where}: label {label!r} is not one of {classes}")
            continue
        if sha in chosen and chosen[sha][1] != label:
            problems.append(
                f"{where}: photo {sha[:12]} is labelled {label!r} here, {chosen[sha][1]!r} at {chosen[sha][0]}"
            )
            continue
        chosen[sha] = (where, label)
    if problems:
        _refuse(labels, problems)
    return {sha: label for sha, (_, label) in chosen.items()}


def _existing(photos: Path) -> dict[str, Path]:
    """The dataset's photos now, by hash (the file name)."""
    if not photos.is_dir():
        return {}
    return {
        p.name.split(".")[0]: p
        for p in photos.glob("*/*")
        if p.is_file() and not p.name.startswith(".")
    }


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # the unchanged photos cost no copy (DVC may have linked them too)
    except OSError:
        shutil.copy2(src, dst)


def import_feedback(labels: Path, log: str, folder: Path, dvc: bool = True) -> ImportResult:
    """A reviewer's label file (CSV or sorted folder) for the photos of ``log`` into ``folder``."""
    return import_rows(labels, read_labels(labels), read_log(log), folder, dvc)


def import_rows(
    source: str | Path,
    rows: list[tuple[str, str, str]],
    kept: dict[str, Kept],
    folder: Path,
    dvc: bool = True,
) -> ImportResult:
    """Labelled photos (``(where, sha256, label)`` rows) into ``folder/photos``, then ``dvc add``.

    Every row is checked first (:func:`checked`; ``source`` names them in the error); the
    photos are written as a staged whole, so a refusal or a crash leaves the last revision.
    """
    wanted = checked(source, rows, kept)
    photos = Path(folder) / PHOTOS
    before = _existing(photos)
    added = relabelled = unchanged = 0
    with staged_dir(photos) as tmp:
        for sha, path in before.items():
            if sha in wanted and wanted[sha] != path.parent.name:
                continue  # labelled again: written below under its new class
            _place(path, tmp / path.parent.name / path.name)
        for sha, label in wanted.items():
            old = before.get(sha)
            if old is not None and old.parent.name == label:
                unchanged += 1
                continue
            relabelled += old is not None
            added += old is None
            write_bytes_atomic(tmp / label / f"{sha}{kept[sha].ext}", kept[sha].read())
    counts = {c.name: sum(1 for _ in c.iterdir()) for c in sorted(photos.iterdir()) if c.is_dir()}
    dvc_file = _dvc_add(photos) if dvc else None
    logger.info(
        "feedback: %d added, %d relabelled, %d unchanged -> %s %s",
        added,
        relabelled,
        unchanged,
        photos,
        counts,
    )
    return ImportResult(photos, added, relabelled, unchanged, counts, dvc_file)


def _dvc_add(photos: Path) -> Path | None:
    """``dvc add`` the photos when they are inside a DVC project; the .dvc file, or None."""
    here = photos.resolve()
    project = next((p for p in here.parents if (p / ".dvc").is_dir()), None)
    if project is None:
        return None
    dvc = shutil.which("dvc")
    if dvc is None:
        raise FeedbackError(f"{photos}: inside a DVC project, but the dvc command is not installed")
    done = subprocess.run(
        [dvc, "add", str(here.relative_to(project))], cwd=project, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise FeedbackError(
            f"dvc add {photos} failed: {done.stderr.strip() or done.stdout.strip()}"
        )
    return photos.with_name(photos.name + ".dvc")
