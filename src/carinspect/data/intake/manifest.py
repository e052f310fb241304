"""manifest.csv (ingest's output) and splits.csv (split's output): schema, read and write.

manifest.csv has one row per accepted image. ``path`` is the resized cache file relative to the
manifest's folder; ``source`` is where the original came from; ``width``/``height`` are the
original size after EXIF orientation.

Several tasks trained together add one ``label:<task>`` column per task (an empty cell: not
labelled for that task); ``label`` then repeats the first task's, so single-task readers of
the file keep working.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from carinspect.config import SPLIT_NAMES
from carinspect.errors import InputError
from carinspect.io import write_text_atomic


class ManifestError(InputError):
    """A manifest or splits file that does not follow the schema."""


@dataclass(frozen=True)
class ManifestRow:
    """One accepted image."""

    sha256: str
    path: str
    source: str
    label: str
    width: int
    height: int
    format: str
    mode: str
    grayscale: int
    near_dup_group: str
    split: str = ""
    group: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)  # several tasks: each one's label


@dataclass(frozen=True)
class SplitRow:
    """The split an image was assigned to, and the unit (group) it moved with."""

    sha256: str
    path: str
    label: str
    split: str
    unit: str
    labels: Mapping[str, str] = field(default_factory=dict)


MANIFEST_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ManifestRow) if f.name != "labels")
SPLIT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(SplitRow) if f.name != "labels")
TASK_PREFIX = "label:"


def row_tasks(rows: list[ManifestRow] | list[SplitRow]) -> list[str]:
    """The tasks the rows are labelled for, in column order (empty: the single ``label``)."""
    return list(rows[0].labels) if rows else []


def label_of(row: ManifestRow | SplitRow, task: str) -> str:
    """``row``'s label for ``task`` ("" when not labelled); a single-task row has ``label``."""
    return row.labels.get(task, "") if row.labels else row.label


def _to_csv(columns: tuple[str, ...], rows: list[ManifestRow] | list[SplitRow]) -> str:
    tasks = row_tasks(rows)
    buf = io.StringIO()
    header = list(columns) + [TASK_PREFIX + t for t in tasks]
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat: dict[str, object] = {k: v for k, v in asdict(r).items() if k != "labels"}
        if list(r.labels) != tasks:
            raise ManifestError(f"{r.path}: labelled for {list(r.labels)}, the others for {tasks}")
        flat.update({TASK_PREFIX + t: v for t, v in r.labels.items()})
        writer.writerow(flat)
    return buf.getvalue()


def manifest_csv(rows: list[ManifestRow]) -> str:
    """Return the text of a manifest.csv holding ``rows``."""
    return _to_csv(MANIFEST_COLUMNS, rows)


def write_splits(rows: list[SplitRow], path: Path) -> None:
    """Write splits.csv atomically."""
    write_text_atomic(path, _to_csv(SPLIT_COLUMNS, rows))


def _read_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing}")
        return list(reader)


def _labels(raw: dict[str, str]) -> dict[str, str]:
    return {k[len(TASK_PREFIX) :]: v for k, v in raw.items() if k.startswith(TASK_PREFIX)}


def read_manifest(path: Path) -> list[ManifestRow]:
    """Read and check a manifest.csv written by ingest."""
    rows = []
    for line, raw in enumerate(_read_rows(Path(path), MANIFEST_COLUMNS), start=2):
        try:
            row = ManifestRow(
                sha256=raw["sha256"],
                path=raw["path"],
                source=raw["source"],
                label=raw["label"],
                width=int(raw["width"]),
                height=int(raw["height"]),
                format=raw["format"],
                mode=raw["mode"],
                grayscale=int(raw["grayscale"]),
                near_dup_group=raw["near_dup_group"],
                split=raw["split"],
                group=raw["group"],
                labels=_labels(raw),
            )
        except ValueError as err:
            raise ManifestError(f"{path}, line {line}: {err}") from None
        labelled = any(row.labels.values()) if row.labels else bool(row.label)
        if not labelled or not row.sha256:
            raise ManifestError(f"{path}, line {line}: empty label or sha256")
        if row.split and row.split not in SPLIT_NAMES:
            raise ManifestError(
                f"{path}, line {line}: split {row.split!r} not in {list(SPLIT_NAMES)}"
            )
        rows.append(row)
    if not rows:
        raise ManifestError(f"{path}: no rows")
    return rows


def read_splits(path: Path) -> list[SplitRow]:
    """Read and check a splits.csv written by split."""
    rows = [
        SplitRow(**{k: raw[k] for k in SPLIT_COLUMNS}, labels=_labels(raw))
        for raw in _read_rows(Path(path), SPLIT_COLUMNS)
    ]
    bad = next((r for r in rows if r.split not in SPLIT_NAMES), None)
    if bad is not None:
        raise ManifestError(f"{path}: split {bad.split!r} of {bad.path} not in {list(SPLIT_NAMES)}")
    return rows
