"""drift.json, the reference profile export writes, and the rolling window serving compares.

Both sides take their statistics from the same places: brightness, contrast and blur from the
model's own input, the tensor the one preprocessing function makes (un-normalised back to
[0, 1]); megapixels from the upload's own size, before any reduction; the embedding distance
from the backbone's pooled features, the graph's ``features`` output. Export computes them on
the training split, serving on each upload it answers, so a difference is the photos', not the
code's. The profile also holds each task's class shares in the training split, which the window
compares with the shares of the labels served.

The embedding distance: the training features are centred and whitened on their first
principal components, and a photo's distance is its squared Mahalanobis distance in that space.
Its distribution over the val photos (which the weights never learnt from) is binned like any
other statistic, so a stream of photos unlike the training ones (further from them) scores a
PSI on the same scale as brightness.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from threading import Lock

import numpy as np
from pydantic import Field, ValidationError

from carinspect.contracts.base import Contract, ContractError, explain, read_json
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.drift.stats import ALERT_PSI, Binned, image_stats, share_psi

# aspect is not among them: the model's input is square whatever the upload's shape
INPUT_STATS = ("brightness", "contrast", "blur")
MEGAPIXELS = "megapixels"  # of the upload as sent (oriented), before the decoder reduces it
EMBEDDING = "embedding"  # squared Mahalanobis distance of the pooled features
COMPONENTS = 8  # principal components of the features the distance is taken on, at most


class BinnedStat(Contract):
    """One statistic of the training photos: inner quantile bin edges, each bin's share."""

    edges: list[float]
    shares: list[float]

    def binned(self) -> Binned:
        """The statistics-side object that scores a stream against it."""
        return Binned(tuple(self.edges), tuple(self.shares))

    @classmethod
    def of(cls, values: Sequence[float]) -> BinnedStat:
        """Quantile bins of ``values``."""
        b = Binned.of(values)
        return cls(edges=list(b.edges), shares=list(b.shares))


class EmbeddingRef(Contract):
    """The training features' centre and whitening projection (``components`` x width)."""

    mean: list[float]
    projection: list[list[float]] = Field(description="rows: components divided by their spread")

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of ``features`` (n, width)."""
        w = np.asarray(self.projection, dtype=np.float32)
        z = (np.asarray(features, dtype=np.float32) - np.asarray(self.mean, np.float32)) @ w.T
        out: np.ndarray = (z * z).sum(axis=1)
        return out


class DriftProfile(Contract):
    """drift.json: what the training photos looked like, for drift scores in serving."""

    images: int = Field(ge=1, description="training photos the profile was taken from")
    alert_psi: float = Field(ALERT_PSI, gt=0.0, description="a PSI above this is an alert")
    stats: dict[str, BinnedStat]
    classes: dict[str, dict[str, float]] = Field(description="per task: class -> train share")
    embedding: EmbeddingRef | None = Field(
        None, description="none: the graph has no features output (no embedding distance)"
    )


def input_stats(tensor: np.ndarray, spec: PreprocessSpec) -> dict[str, float]:
    """Image statistics of a model input (3, H, W), normalised as ``spec`` says."""
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    rgb = np.clip((tensor * std + mean) * 255.0, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    found = image_stats(rgb)
    return {name: found[name] for name in INPUT_STATS}


def photo_stats(
    tensor: np.ndarray, spec: PreprocessSpec, width: int, height: int
) -> dict[str, float]:
    """:func:`input_stats` and the upload's megapixels (``width`` x ``height`` as sent)."""
    return {**input_stats(tensor, spec), MEGAPIXELS: width * height / 1e6}


def fit_embedding(
    features: np.ndarray, unseen: np.ndarray | None = None
) -> tuple[EmbeddingRef, BinnedStat] | None:
    """The whitening of the training features, and the distances of photos the model never saw.

    ``unseen``: features of held-out photos (the val split), whose distances are the reference
    an in-distribution served photo is compared with: a fine-tuned model places its own training
    photos closer than any new photo, so their distances would make every new photo look far.
    With fewer than 8 of them, half the training photos are held out of the fit instead. None
    with fewer than 8 training photos: too few to say what is typical.
    """
    f = np.asarray(features, dtype=np.float64)
    if len(f) < 8:
        return None
    if unseen is not None and len(unseen) >= 8:
        fit, held = f, np.asarray(unseen, dtype=np.float64)
    else:
        fit, held = f[::2], f[1::2]
    mean = fit.mean(axis=0)
    _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
    k = max(1, min(COMPONENTS, len(fit) - 1, int((s > s[0] * 1e-6).sum())))
    spread = s[:k] / np.sqrt(len(fit) - 1)
    floor = spread[0] * 1e-3  # a direction the fit barely moves in must not dominate
    projection = vt[:k] / np.maximum(spread, floor)[:, None]
    ref = EmbeddingRef(
        mean=[float(x) for x in mean.astype(np.float32)],
        projection=[[float(x) for x in row] for row in projection.astype(np.float32)],
    )
    return ref, BinnedStat.of(ref.distances(held).tolist())


def build_profile(
    inputs: Iterable[np.ndarray],
    spec: PreprocessSpec,
    labels: dict[str, list[str]],
    sizes: Sequence[tuple[int, int]],
    features: np.ndarray | None = None,
    unseen: np.ndarray | None = None,
) -> DriftProfile:
    """The profile of the training inputs, their sizes as ingested and their labels.

    ``labels``: per task, one label per input ("" = unlabelled). ``features``: their pooled
    features, one row per input (none: no embedding distance); ``unseen``: the features of
    held-out photos (see :func:`fit_embedding`).
    """
    rows = [photo_stats(t, spec, w, h) for t, (w, h) in zip(inputs, sizes, strict=True)]
    if not rows:
        raise ContractError("no training images to take a drift profile from")
    stats = {name: BinnedStat.of([r[name] for r in rows]) for name in rows[0]}
    fitted = fit_embedding(features, unseen) if features is not None else None
    if fitted is not None:
        stats[EMBEDDING] = fitted[1]
    classes = {}
    for task, values in labels.items():
        seen = [v for v in values if v]
        names = sorted(set(seen))
        classes[task] = {n: round(seen.count(n) / len(seen), 6) for n in names}
    return DriftProfile(
        images=len(rows),
        stats=stats,
        classes=classes,
        embedding=fitted[0] if fitted is not None else None,
    )


def read_profile(path: Path) -> DriftProfile:
    """drift.json, validated (a version exported before drift profiles has none: not here)."""
    raw = read_json(path, "the drift profile export writes")
    try:
        return DriftProfile.model_validate(raw)
    except ValidationError as err:
        raise ContractError(f"{path}: {explain(err)}") from None


class DriftWindow:
    """The last ``size`` answered photos: their statistics and labels, scored on demand."""

    def __init__(self, profile: DriftProfile, size: int) -> None:
        self.profile = profile
        self._binned = {name: s.binned() for name, s in profile.stats.items()}
        self._stats: deque[dict[str, float]] = deque(maxlen=size)
        self._labels: deque[dict[str, str]] = deque(maxlen=size)
        self._lock = Lock()

    def add(self, stats: dict[str, float], labels: dict[str, str]) -> None:
        """One answered photo (called from the event loop: appends only)."""
        with self._lock:
            self._stats.append(stats)
            self._labels.append(labels)

    def __len__(self) -> int:
        return len(self._stats)

    def scores(self) -> dict[str, dict[str, float]]:
        """PSI per image statistic and per task's predicted-class mix, over the window."""
        with self._lock:
            stats, labels = list(self._stats), list(self._labels)
        image = {
            name: b.psi(s[name] for s in stats if name in s) for name, b in self._binned.items()
        }
        tasks = {
            task: share_psi(shares, [lab[task] for lab in labels if lab.get(task) in shares])
            for task, shares in self.profile.classes.items()
            if shares
        }
        return {"image": image, "classes": tasks}
