"""Two registered versions judged on one identical set of photos, as each one serves.

A candidate's recorded test metric and the champion's were measured on different test splits
once the data changes (feedback photos join it): a candidate can pass because its test split got
easier. Here both versions answer the same photos (the candidate's test split and the golden set
of reviewed production photos no version trained on) through the preprocessing and decision rule
each one ships (the serving path: :func:`carinspect.serving.opening.open_model`), and the gate
compares those figures. The set's digest (each photo's content hash and label) is recorded with
them, so the audit trail says what they were measured on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from carinspect.contracts.folders import IngestDir
from carinspect.data.decoding.images import ImageLimits
from carinspect.data.intake.manifest import read_splits
from carinspect.data.intake.sources import folder_source
from carinspect.errors import InputError
from carinspect.serving.inference import answer, pixels_for
from carinspect.serving.loaded import LoadedModel, ModelRef
from carinspect.serving.opening import open_model
from carinspect.serving.settings import ServeSettings

BATCH = 32


class JudgeError(InputError):
    """The two versions cannot be judged on the same photos."""


@dataclass(frozen=True)
class Photo:
    """One photo of the set: a name for messages, its bytes, its class."""

    name: str
    read: Callable[[], bytes]
    label: str


@dataclass(frozen=True)
class PhotoSet:
    """The photos both versions answer, and what identifies the set."""

    photos: list[Photo]
    digest: str  # sha256 over each photo's content hash and label, sorted
    parts: dict[str, int]  # photos per part: test split, golden set


def photo_set(ingest_dir: Path, splits: Path, golden: Path | None) -> PhotoSet:
    """The test split of ``splits`` (images under ``ingest_dir``) and the golden set's photos."""
    ingest_dir = Path(ingest_dir)
    rows = [r for r in read_splits(Path(splits)) if r.split == "test"]
    photos = [Photo(r.path, (ingest_dir / r.path).read_bytes, r.label) for r in rows]
    parts = {"test split": len(photos)}
    if golden is not None and Path(golden).is_dir():
        items = folder_source(Path(golden), str(golden)).items
        photos += [Photo(i.source, i.read, i.label) for i in items]
        parts["golden set"] = len(items)
    if not photos:
        raise JudgeError(f"{splits}: no test photos (and no golden set) to judge on")
    digest = hashlib.sha256()
    for line in sorted(f"{hashlib.sha256(p.read()).hexdigest()} {p.label}" for p in photos):
        digest.update(line.encode() + b"\n")
    return PhotoSet(photos, "sha256:" + digest.hexdigest(), parts)


def manifest_digest(ingest_dir: Path) -> str:
    """The ``data.digest`` lineage tag of the data in ``ingest_dir`` (what register recorded)."""
    return "sha256:" + hashlib.sha256(IngestDir(ingest_dir).manifest.read_bytes()).hexdigest()


def score(folder: Path, photos: PhotoSet, metric: str) -> dict[str, Any]:
    """``metric`` of the model in ``folder`` on ``photos``, answered as it serves.

    An answer of ``uncertain`` (inside the rule's band) counts as wrong: a client got no class.
    """
    model = open_model(ModelRef.parse(str(folder)), None, Path(folder), ServeSettings())
    if model.multitask:
        raise JudgeError(f"{folder}: several tasks; the same-photos gate judges one-task models")
    classes = model.classes
    unknown = sorted({p.label for p in photos.photos} - set(classes))
    if unknown:
        raise JudgeError(f"{folder}: the photos are labelled {unknown}, classes it does not have")
    truth = np.array([classes.index(p.label) for p in photos.photos])
    pred, probs = _answers(model, photos)
    return {"metric": metric, "value": round(_metric(metric, truth, pred, probs), 6),
            "uncertain": int((pred < 0).sum()), "photos": len(truth)}  # fmt: skip


def _answers(model: LoadedModel, photos: PhotoSet) -> tuple[np.ndarray, np.ndarray]:
    """Each photo's answered class index (-1: uncertain) and probabilities."""
    limits = ImageLimits()
    pred, probs = [], []
    for i in range(0, len(photos.photos), BATCH):
        chunk = photos.photos[i : i + BATCH]
        batch = np.stack([pixels_for(p.read(), model, limits) for p in chunk])
        for scores in model.infer(batch):
            label = answer(model, scores).labels[model.tasks[0].name]
            pred.append(model.classes.index(label) if label in model.classes else -1)
            probs.append(scores.probs)
    return np.array(pred), np.stack(probs)


def _metric(metric: str, truth: np.ndarray, pred: np.ndarray, probs: np.ndarray) -> float:
    from sklearn import metrics as skm

    k = probs.shape[1]
    if metric == "accuracy":
        return float((pred == truth).mean())
    if metric == "balanced_accuracy":
        return float(np.mean([(pred[truth == c] == c).mean() for c in np.unique(truth)]))
    if metric in ("macro_f1", "weighted_f1"):
        average = metric.split("_")[0]
        return float(skm.f1_score(truth, pred, labels=list(range(k)), average=average,
                                  zero_division=0))  # fmt: skip
    if metric == "auroc_macro":
        if k == 2:
            return float(skm.roc_auc_score(truth, probs[:, 1]))
        return float(skm.roc_auc_score(truth, probs, multi_class="ovr", labels=list(range(k))))
    raise JudgeError(f"promote.metric {metric!r}: not one the same-photos gate computes")
