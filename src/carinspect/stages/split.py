"""split: stratified, group-aware train/val/test assignment of the ingested images.

Images that are near-duplicates (ingest's ``near_dup_group``) or share a ``group`` value (same car,
same session) form one *unit* and always land in the same split, so no photo of a car in val or
test has a near-twin in train. Units are assigned greedily, largest first, to the split whose
per-class shortfall against its target is largest; shuffling with ``split.seed`` first makes the
result deterministic. A manifest that brings its own ``split`` column is honoured as given.

Several tasks trained together: the split stratifies on the *rarest* task, the one whose
smallest class has the fewest images (images it has no label for form one more stratum). That
class is the one most likely to end up missing from val or test, which would leave its task's
metrics and threshold undefined; the commoner classes of the other tasks spread evenly by chance
at the sizes where their split matters. The report gives each task's counts per split.

Output folder ``out``: ``splits.csv``, ``report.json``, ``report.md`` and ``metrics.json`` (images
and fraction per split, for ``dvc metrics show``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from carinspect.config import SPLIT_NAMES, SplitConfig
from carinspect.contracts.folders import SplitDir
from carinspect.data.intake.groups import DisjointSet
from carinspect.data.intake.manifest import (
    ManifestRow,
    SplitRow,
    label_of,
    read_manifest,
    row_tasks,
    write_splits,
)
from carinspect.data.intake.report import render_split_report
from carinspect.errors import InputError
from carinspect.io import staged_dir, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)


class SplitError(InputError):
    """The manifest cannot be split as asked (a class too small, a partial split column)."""


@dataclass(frozen=True)
class SplitResult:
    """Paths and per-split class counts of one split run."""

    out: Path
    splits: Path
    report: Path
    counts: dict[str, dict[str, int]]


def units_of(rows: list[ManifestRow]) -> list[int]:
    """For each row, the id (first row index) of the unit it must move with."""
    ds = DisjointSet(len(rows))
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        by_key.setdefault(("near", r.near_dup_group), []).append(i)
        if r.group:
            by_key.setdefault(("group", r.group), []).append(i)
    for members in by_key.values():
        ds.union_all(members)
    return ds.labels()


_UNLABELLED = "\x00unlabelled"  # the stratum of rows without a label for the stratifying task


def rarest_task(rows: list[ManifestRow]) -> str | None:
    """The task whose smallest class has the fewest images (None: a single-task manifest)."""
    tasks = row_tasks(rows)
    if not tasks:
        return None

    def smallest(task: str) -> int:
        counts = Counter(label_of(r, task) for r in rows if label_of(r, task))
        return min(counts.values(), default=0)

    return min(tasks, key=smallest)  # ties: the first listed


def _check_sizes(rows: list[ManifestRow], units: list[int], fractions: dict[str, float]) -> None:
    needed = sum(1 for f in fractions.values() if f > 0)
    wanted = ", ".join(f"{s}={f:g}" for s, f in fractions.items())
    for label in sorted({r.label for r in rows} - {_UNLABELLED}):
        n = sum(r.label == label for r in rows)
        n_units = len({u for r, u in zip(rows, units, strict=True) if r.label == label})
        if n_units < needed:
            raise SplitError(
                f"class {label!r} has {n} image(s) in {n_units} unit(s) (near-duplicates and groups "
                f"count once); split fractions {wanted} need at least {needed}: add images of "
                f"{label!r} or drop the class"
            )


def _assign(
    rows: list[ManifestRow], units: list[int], fractions: dict[str, float], seed: int
) -> dict[int, str]:
    """Greedy stratified assignment of units to splits."""
    labels = sorted({r.label for r in rows})
    col = {label: j for j, label in enumerate(labels)}
    members: dict[int, Counter[str]] = {}
    for r, u in zip(rows, units, strict=True):
        members.setdefault(u, Counter())[r.label] += 1
    names = [s for s in SPLIT_NAMES if fractions[s] > 0]
    totals = np.array([sum(r.label == label for r in rows) for label in labels], dtype=np.float64)
    target = np.array([np.maximum(1.0, totals * fractions[s]) for s in names])
    current = np.zeros_like(target)
    order = list(members)
    np.random.default_rng(seed).shuffle(order)
    order.sort(key=lambda u: -sum(members[u].values()))  # stable: ties keep the shuffled order
    assigned: dict[int, str] = {}
    for u in order:
        vec = np.zeros(len(labels))
        for label, k in members[u].items():
            vec[col[label]] = k
        score = ((target - current) / target) @ vec
        best = int(np.argmax(score))
        current[best] += vec
        assigned[u] = names[best]
    return assigned


def run(cfg: SplitConfig, manifest: Path, out: Path) -> SplitResult:
    """Split the images of ``manifest`` and write ``out/splits.csv`` with its report."""
    rows = read_manifest(Path(manifest))
    stratify_on = rarest_task(rows)
    units = units_of(rows)
    fractions = cfg.fractions()
    warnings: list[str] = []
    if cfg.respect_manifest_split and any(r.split for r in rows):
        method = "manifest split column"
        split_of_row = _given_splits(rows, units, manifest, warnings)
    else:
        strata = rows
        if stratify_on is not None:
            strata = [replace(r, label=label_of(r, stratify_on) or _UNLABELLED) for r in rows]
        _check_sizes(strata, units, fractions)
        assigned = _assign(strata, units, fractions, cfg.seed)
        split_of_row = [assigned[u] for u in units]
        method = "stratified greedy by unit"
    out_rows = [
        SplitRow(r.sha256, r.path, r.label, s, rows[u].sha256[:16], r.labels)
        for r, u, s in zip(rows, units, split_of_row, strict=True)
    ]
    counts = {
        s: dict(sorted(Counter(r.label for r in out_rows if r.split == s and r.label).items()))
        for s in SPLIT_NAMES
    }
    by_task = {
        t: {
            s: dict(sorted(Counter(label_of(r, t) for r in out_rows if r.split == s).items()))
            for s in SPLIT_NAMES
        }
        for t in row_tasks(out_rows)
    }
    warnings += _empty_classes(rows, by_task or {"": counts}, fractions)
    report: dict[str, Any] = {
        "images": len(out_rows),
        "units": len(set(units)),
        "method": method,
        "seed": cfg.seed,
        "splits": {
            s: {
                "images": sum(counts[s].values()),
                "fraction": round(sum(counts[s].values()) / len(out_rows), 4),
                "class_counts": counts[s],
            }
            for s in SPLIT_NAMES
        },
        "warnings": warnings,
        "params": {"split": cfg.model_dump()},  # logged on the training run by train
    }
    if by_task:  # several tasks: what each holds per split ("" = not labelled for it)
        report["stratified_on"] = stratify_on
        report["tasks"] = {
            t: {s: {(c or "(unlabelled)"): n for c, n in v.items()} for s, v in per.items()}
            for t, per in by_task.items()
        }
    out = Path(out)
    with staged_dir(out) as staged:
        tmp = SplitDir(staged)
        write_splits(out_rows, tmp.splits)
        write_json_atomic(tmp.report, report)
        write_json_atomic(
            tmp.metrics,
            {
                s: {"images": v["images"], "fraction": v["fraction"]}
                for s, v in report["splits"].items()
            },
        )
        write_text_atomic(tmp.report_md, render_split_report(report))
    for w in warnings:
        logger.warning("split: %s", w)
    logger.debug(
        "split: %s -> %s",
        ", ".join(f"{s} {report['splits'][s]['images']}" for s in SPLIT_NAMES),
        SplitDir(out).splits,
    )
    return SplitResult(
        out=out, splits=SplitDir(out).splits, report=SplitDir(out).report, counts=counts
    )


def _given_splits(
    rows: list[ManifestRow], units: list[int], manifest: Path, warnings: list[str]
) -> list[str]:
    """The manifest's own split column (every row must have one); a unit across splits warns."""
    missing = [r.source for r in rows if not r.split]
    if missing:
        raise SplitError(
            f"{manifest}: {len(missing)} row(s) have no split while others do (first: "
            f"{missing[0]!r}); give every row a split, or set split.respect_manifest_split: false"
        )
    spans: dict[int, set[str]] = {}
    for r, u in zip(rows, units, strict=True):
        spans.setdefault(u, set()).add(r.split)
    for u, found in spans.items():
        if len(found) > 1:
            warnings.append(
                f"near-duplicates/group of {rows[u].source!r} span splits {sorted(found)} (leakage)"
            )
    return [r.split for r in rows]


def _empty_classes(
    rows: list[ManifestRow],
    by_task: dict[str, dict[str, dict[str, int]]],
    fractions: dict[str, float],
) -> list[str]:
    """A warning per split (of non-zero fraction) that has no image of a class ("" = one task)."""
    warnings = []
    for t, per_split in by_task.items():
        for s in SPLIT_NAMES:
            present = {c for c in per_split[s] if c}
            empty = sorted({label_of(r, t) if t else r.label for r in rows} - present - {""})
            if empty and fractions[s] > 0:
                named = f" of task {t!r}" if t else ""
                warnings.append(f"split {s!r} has no images{named} of {empty}")
    return warnings
