"""manifest.csv (ingest's output) and splits.csv (split's output): schema, read and write.

manifest.csv has one row per accepted image. ``path`` is the resized cache file relative to the
manifest's folder; ``source`` is where the original came from; ``width``/``height`` are the
original size after EXIF orientation.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, fields
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


@dataclass(frozen=True)
class SplitRow:
    """The split an image was assigned to, and the unit (group) it moved with."""

    sha256: str
    path: str
    label: str
    split: str
    unit: str


MANIFEST_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ManifestRow))
SPLIT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(SplitRow))


def _to_csv(columns: tuple[str, ...], rows: list[dict[str, object]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def manifest_csv(rows: list[ManifestRow]) -> str:
    """Return the text of a manifest.csv holding ``rows``."""
    return _to_csv(MANIFEST_COLUMNS, [asdict(r) for r in rows])


def write_splits(rows: list[SplitRow], path: Path) -> None:
    """Write splits.csv atomically."""
    write_text_atomic(path, _to_csv(SPLIT_COLUMNS, [asdict(r) for r in rows]))


def _read_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing}")
        return list(reader)


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
            )
        except ValueError as err:
            raise ManifestError(f"{path}, line {line}: {err}") from None
        if not row.label or not row.sha256:
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
        SplitRow(**{k: raw[k] for k in SPLIT_COLUMNS})
        for raw in _read_rows(Path(path), SPLIT_COLUMNS)
    ]
    bad = next((r for r in rows if r.split not in SPLIT_NAMES), None)
    if bad is not None:
        raise ManifestError(f"{path}: split {bad.split!r} of {bad.path} not in {list(SPLIT_NAMES)}")
    return rows
