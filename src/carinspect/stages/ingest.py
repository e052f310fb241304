"""ingest: decode and validate every source image into a resized, content-addressed cache.

Output folder ``out``: ``images/<aa>/<sha256>.png`` (short side ``ingest.short_side``; with
``data.format: shards`` the same PNGs packed into webdataset tar shards, ``images/<shard>.tar``
or under the ``data.shards`` S3 prefix, with their index ``images/shards.json``),
``manifest.csv``, the data report (``report.json``, ``report.md``) and its headline figures in
``metrics.json`` (for ``dvc metrics show``). The folder is built under a temporary
name and renamed into place, so a failed or interrupted run leaves the previous output intact.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import logging
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from carinspect.config import DataConfig, IngestConfig
from carinspect.contracts.folders import IngestDir
from carinspect.contracts.shards import INDEX_FILE
from carinspect.data.decoding.fingerprint import dhash, near_duplicate_groups, sha256_bytes
from carinspect.data.decoding.images import (
    ImageError,
    ImageLimits,
    decode_image,
    grayscale_spread,
)
from carinspect.data.intake import quality
from carinspect.data.intake.feedback import open_feedback
from carinspect.data.intake.manifest import ManifestRow, label_of, manifest_csv
from carinspect.data.intake.report import render_ingest_report
from carinspect.data.intake.sources import Rejected, SourceItem, open_source
from carinspect.data.storage.objects import ObjectError, open_location
from carinspect.data.storage.shards import PackItem, write_shards
from carinspect.data.storage.store import IMAGES
from carinspect.errors import InputError
from carinspect.io import staged_dir, write_bytes_atomic, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

GRAYSCALE_SPREAD = 8.0  # mean channel spread below which an image counts as grayscale


class IngestError(InputError):
    """The source as a whole cannot make a dataset (too few classes, nothing decodable)."""


@dataclass(frozen=True)
class IngestResult:
    """Paths and headline figures of one ingest run."""

    out: Path
    manifest: Path
    report: Path
    images: int
    dropped: int
    classes: tuple[str, ...]
    manifest_sha256: str
    shortcut_warning: bool


@dataclass(frozen=True)
class _Accepted:
    row: ManifestRow
    dhash: int


def _process(
    item: SourceItem, limits: ImageLimits, short_side: int, root: Path
) -> _Accepted | Rejected:
    """Read, validate, fingerprint and cache one file (runs on a worker thread)."""
    try:
        data = item.read()
    except Exception as err:  # any transport error: the file is reported, the run goes on
        return Rejected(item.source, item.label, "unreadable", f"{type(err).__name__}: {err}")
    try:
        decoded = decode_image(data, limits, short_side)
    except ImageError as err:
        return Rejected(item.source, item.label, err.reason, err.detail)
    sha = sha256_bytes(data)
    rel = f"images/{sha[:2]}/{sha}.png"
    buf = io.BytesIO()
    decoded.image.save(buf, format="PNG", compress_level=6)
    write_bytes_atomic(root / rel, buf.getvalue())
    row = ManifestRow(
        sha256=sha,
        path=rel,
        source=item.source,
        label=item.label,
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
        mode=decoded.mode,
        grayscale=int(grayscale_spread(decoded.image) < GRAYSCALE_SPREAD),
        near_dup_group="",
        split=item.split or "",
        group=item.group or "",
        labels=dict(item.labels or {}),
    )
    return _Accepted(row, dhash(decoded.image))


def _decode_all(
    items: list[SourceItem], cfg: IngestConfig, root: Path
) -> list[_Accepted | Rejected]:
    limits = ImageLimits(min_side=cfg.min_side, max_pixels=cfg.max_pixels, max_bytes=cfg.max_bytes)
    results: list[_Accepted | Rejected | None] = [None] * len(items)
    with cf.ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        futures = {
            pool.submit(_process, item, limits, cfg.short_side, root): i
            for i, item in enumerate(items)
        }
        with tqdm(total=len(items), desc="ingest", unit="img", disable=None) as bar:
            for fut in cf.as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update()
    return [r for r in results if r is not None]


def _deduplicate(
    accepted: list[_Accepted], root: Path, reviewed: frozenset[str] = frozenset()
) -> tuple[list[_Accepted], list[Rejected]]:
    """Keep the first copy of identical files; drop every copy when copies disagree on the label.

    A copy from ``reviewed`` (the feedback photos' sources) is a reviewer's later word on the
    same file: where the reviewed copies agree, their label replaces the others' (the photo keeps
    the split and group the source gave it), so a wrong label corrected in review is corrected
    here rather than dropping the photo.
    """
    by_sha: dict[str, list[_Accepted]] = {}
    for a in accepted:
        by_sha.setdefault(a.row.sha256, []).append(a)
    kept: list[_Accepted] = []
    dropped: list[Rejected] = []
    for a in accepted:
        copies = by_sha[a.row.sha256]
        labels = sorted({_all_labels(c.row) for c in copies})
        said = [c for c in copies if c.row.source in reviewed]
        if len(labels) > 1 and said and len({_all_labels(c.row) for c in said}) == 1:
            if a.row.source in reviewed:  # the reviewer's copy, in the place of the first copy
                if a is said[0]:
                    first = copies[0].row
                    row = replace(a.row, split=first.split, group=first.group)
                    kept.append(_Accepted(row, a.dhash))
                else:
                    dropped.append(Rejected(a.row.source, a.row.label, "exact_duplicate",
                                            f"same bytes as {said[0].row.source}"))  # fmt: skip
            else:
                dropped.append(Rejected(a.row.source, a.row.label, "relabelled_in_review",
                                        f"{said[0].row.source} says {said[0].row.label!r}"))  # fmt: skip
        elif len(labels) > 1:
            dropped.append(
                Rejected(
                    a.row.source,
                    a.row.label,
                    "conflicting_labels",
                    f"identical bytes are labelled {labels}",
                )
            )
            (root / a.row.path).unlink(missing_ok=True)
        elif copies[0] is a:
            kept.append(a)
        else:
            dropped.append(
                Rejected(
                    a.row.source,
                    a.row.label,
                    "exact_duplicate",
                    f"same bytes as {copies[0].row.source}",
                )
            )
    return kept, dropped


def _all_labels(row: ManifestRow) -> str:
    """Every task's label of a row, as one comparable string."""
    if not row.labels:
        return row.label
    return ", ".join(f"{t}={v or '-'}" for t, v in row.labels.items())


def _task_classes(rows: list[ManifestRow], tasks: list[str]) -> dict[str, dict[str, int]]:
    """Images per class of every trained task (unlabelled ones left out)."""
    return {
        t: dict(sorted(Counter(label_of(r, t) for r in rows if label_of(r, t)).items()))
        for t in tasks
    }


def _near_duplicates(
    kept: list[_Accepted], max_distance: int
) -> tuple[list[ManifestRow], list[dict[str, Any]]]:
    """Give every row its near-duplicate cluster id; list clusters with more than one image."""
    ids = near_duplicate_groups([a.dhash for a in kept], max_distance)
    rows = [
        replace(a.row, near_dup_group=kept[g].row.sha256[:16])
        for a, g in zip(kept, ids, strict=True)
    ]
    clusters: dict[int, list[ManifestRow]] = {}
    for row, g in zip(rows, ids, strict=True):
        clusters.setdefault(g, []).append(row)
    report = [
        {
            "group": members[0].near_dup_group,
            "labels": sorted({m.label for m in members}),
            "sources": [m.source for m in members],
        }
        for members in clusters.values()
        if len(members) > 1
    ]
    return rows, report


def _pack(
    rows: list[ManifestRow], tasks: list[str], data: DataConfig, cfg: IngestConfig, root: Path
) -> tuple[list[ManifestRow], dict[str, Any]]:
    """Move the per-file cache under ``root`` into shards; rows then name ``images/<shard>/…``."""
    store = open_location(data.shards, root / IMAGES)
    items = (
        PackItem(r.sha256, (root / r.path).read_bytes, {t: label_of(r, t) for t in tasks})
        for r in sorted(rows, key=lambda r: r.sha256)
    )
    try:
        index, where = write_shards(
            items, tasks, round(cfg.shard_mb * 2**20), root / ".shards", store
        )
    except ObjectError as err:
        raise IngestError(f"data.shards: {err}") from None
    shutil.rmtree(root / ".shards", ignore_errors=True)
    for folder in (root / IMAGES).iterdir():  # the per-file cache's images/<aa>/ folders
        if folder.is_dir():
            shutil.rmtree(folder)
    write_json_atomic(root / IMAGES / INDEX_FILE, index.model_dump())
    packed = [replace(r, path=f"{IMAGES}/{where[r.sha256]}/{r.sha256}.png") for r in rows]
    summary = {
        "format": "shards",
        "location": store.uri if data.shards else f"{IMAGES}/",
        "shards": len(index.shards),
        "bytes": sum(s.bytes for s in index.shards),
    }
    return packed, summary


def run(data: DataConfig, cfg: IngestConfig, out: Path) -> IngestResult:
    """Ingest ``data.source`` into ``out``; see the module docstring for the layout."""
    out = Path(out)
    if data.shards:  # a bucket that refuses us should stop the run before it decodes anything
        try:
            open_location(data.shards, out).check()
        except ObjectError as err:
            raise IngestError(f"data.shards: {err}") from None
    with (
        open_source(data.source, data.demo, data.task, data.coco_tasks) as source,
        open_feedback(data.feedback, source, data.feedback_new_classes) as feedback,
        staged_dir(out) as tmp,
    ):
        decoded = _decode_all(source.items + feedback, cfg, tmp)
        accepted = [r for r in decoded if isinstance(r, _Accepted)]
        rejected = list(source.rejected) + [r for r in decoded if isinstance(r, Rejected)]
        kept, duplicates = _deduplicate(accepted, tmp, frozenset(f.source for f in feedback))
        rejected += duplicates
        per_task = _task_classes([a.row for a in kept], source.tasks)
        _check_classes(per_task, data, cfg, len(kept), len(rejected), out)
        classes = list(per_task[source.task])
        rows, near_dups = _near_duplicates(kept, cfg.near_duplicate_distance)
        storage: dict[str, Any] = {"format": "files", "location": f"{IMAGES}/"}
        if data.format == "shards":
            rows, storage = _pack(rows, source.tasks, data, cfg, tmp)
        text = manifest_csv(rows)
        manifest_sha = sha256_bytes(text.encode("utf-8"))
        written = IngestDir(tmp)
        write_text_atomic(written.manifest, text)
        report = _report(source.kind, data.source, rows, rejected, near_dups, cfg, manifest_sha)
        report["task"] = source.task
        report["feedback"] = {"folder": data.feedback, "files": len(feedback)}
        report["storage"] = storage
        if len(source.tasks) > 1:  # trained together: images per class of each
            report["trained_tasks"] = per_task
        if source.task_counts:  # a manifest with a column per task: what each one holds
            report["tasks"] = {t: dict(sorted(c.items())) for t, c in source.task_counts.items()}
        # the params that made this folder: train logs them on its run (params never change
        # there, and these are exactly the ones behind the images it trained on)
        report["params"] = {"data": data.model_dump(), "ingest": cfg.model_dump()}
        write_json_atomic(written.report, report)
        write_json_atomic(written.metrics, _metrics(report))
        write_text_atomic(written.report_md, render_ingest_report(report))
    shortcut = report["shortcut"]
    _warn(shortcut, near_dups, cfg, IngestDir(out).report_md)
    logger.debug("ingest: %d images kept, %d dropped -> %s", len(rows), len(rejected), out)
    return IngestResult(
        out=out,
        manifest=IngestDir(out).manifest,
        report=IngestDir(out).report,
        images=len(rows),
        dropped=len(rejected),
        classes=tuple(classes),
        manifest_sha256=manifest_sha,
        shortcut_warning=bool(shortcut.get("warning")),
    )


def _check_classes(
    per_task: dict[str, dict[str, int]],
    data: DataConfig,
    cfg: IngestConfig,
    kept: int,
    dropped: int,
    out: Path,
) -> None:
    """Refuse a task with fewer than two classes, or a class under ingest.min_per_class."""
    for task, counts in per_task.items():
        named = f" of task {task!r}" if len(per_task) > 1 else ""
        if len(counts) < 2:
            raise IngestError(
                f"data.source {data.source!r}: {kept} usable images in {len(counts)} "
                f"class(es){named} {list(counts)}; at least two classes are needed "
                f"({dropped} files were dropped)"
            )
        few = {c: n for c, n in counts.items() if n < cfg.min_per_class}
        if few:
            shown = ", ".join(f"{c!r}: {n}" for c, n in sorted(few.items()))
            raise IngestError(
                f"data.source {data.source!r}: class(es){named} with fewer than "
                f"ingest.min_per_class={cfg.min_per_class} usable images ({shown}); split "
                f"needs one per split: add images or drop the class ({out} is unchanged)"
            )


def _warn(
    shortcut: dict[str, Any], near_dups: list[dict[str, Any]], cfg: IngestConfig, page: Path
) -> None:
    """The console warnings a reader must see: a shortcut, and one photo under two labels."""
    if shortcut.get("warning"):
        logger.warning(
            "SHORTCUT: %s alone separate the classes (cross-validated AUC %s >= %s); "
            "a model may learn the file, not the car. See %s",
            ", ".join(shortcut["features"]),
            {k: shortcut["auc"][k] for k in shortcut["features"]},
            cfg.shortcut_auc,
            page,
        )
    conflicts = [g for g in near_dups if len(g["labels"]) > 1]
    if conflicts:  # one photo under two labels: at least one of the labels is wrong
        first = conflicts[0]
        logger.warning(
            "%d near-duplicate group(s) carry different labels, e.g. %s (%s): check them; all "
            "are listed in %s",
            len(conflicts), ", ".join(first["sources"][:3]), " vs ".join(first["labels"]),
            page,
        )  # fmt: skip


def _metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Pick the headline numbers of the report, flat enough for `dvc metrics show`."""
    shortcut = report["shortcut"]
    return {
        "images": report["images"],
        "dropped": report["dropped"],
        "classes": report["classes"],
        "imbalance_ratio": report["imbalance_ratio"],
        "near_duplicate_groups": report["near_duplicate_groups"],
        "shortcut_auc": max(shortcut["auc"].values()) if shortcut.get("checked") else None,
        "shortcut_warning": bool(shortcut.get("warning")),
        "class_counts": report["class_counts"],
    }


def _report(
    kind: str,
    uri: str,
    rows: list[ManifestRow],
    rejected: list[Rejected],
    near_dups: list[dict[str, Any]],
    cfg: IngestConfig,
    manifest_sha: str,
) -> dict[str, Any]:
    labelled = [r for r in rows if r.label]  # several tasks: the first task's labelled images
    per_class = quality.class_stats(labelled)
    counts = {k: v["count"] for k, v in per_class.items()}
    reasons: dict[str, int] = {}
    for r in rejected:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    return {
        "images": len(rows),
        "dropped": len(rejected),
        "classes": len(counts),
        "imbalance_ratio": quality.imbalance_ratio(counts),
        "class_counts": counts,
        "dropped_by_reason": dict(sorted(reasons.items())),
        "near_duplicate_groups": len(near_dups),
        "near_duplicate_images": sum(len(g["sources"]) for g in near_dups),
        "shortcut": quality.shortcut_check(labelled, cfg.shortcut_auc, cfg.shortcut_folds),
        "per_class": per_class,
        "source": {"kind": kind, "uri": uri},
        "short_side": cfg.short_side,  # training images were stored at this size: serving too
        "manifest_sha256": manifest_sha,
        "dropped_files": [asdict(r) for r in rejected],
        "near_duplicates": near_dups,
    }
