"""drift.json, the reference profile export writes, and the rolling window serving compares.

Both sides take their image statistics from the same place: the model's own input, the tensor
the one preprocessing function makes (un-normalised back to [0, 1]). Export computes them on
the training split, serving on each upload it answers, so a difference is the photos', not the
code's. The profile also holds each task's class shares in the training split, which the window
compares with the shares of the labels served.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from pathlib import Path
from threading import Lock

import numpy as np
from pydantic import Field, ValidationError

from carinspect.contracts.base import Contract, ContractError, explain, read_json
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.drift.stats import ALERT_PSI, Binned, image_stats, share_psi

# aspect is not among them: the model's input is square whatever the upload's shape
SERVED_STATS = ("brightness", "contrast", "blur")


class BinnedStat(Contract):
    """One statistic of the training photos: inner quantile bin edges, each bin's share."""

    edges: list[float]
    shares: list[float]

    def binned(self) -> Binned:
        """The statistics-side object that scores a stream against it."""
        return Binned(tuple(self.edges), tuple(self.shares))


class DriftProfile(Contract):
    """drift.json: what the training photos looked like, for drift scores in serving."""

    images: int = Field(ge=1, description="training photos the profile was taken from")
    alert_psi: float = Field(ALERT_PSI, gt=0.0, description="a PSI above this is an alert")
    stats: dict[str, BinnedStat]
    classes: dict[str, dict[str, float]] = Field(description="per task: class -> train share")


def input_stats(tensor: np.ndarray, spec: PreprocessSpec) -> dict[str, float]:
    """Image statistics of a model input (3, H, W), normalised as ``spec`` says."""
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    rgb = np.clip((tensor * std + mean) * 255.0, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    found = image_stats(rgb)
    return {name: found[name] for name in SERVED_STATS}


def build_profile(
    inputs: Iterable[np.ndarray], spec: PreprocessSpec, labels: dict[str, list[str]]
) -> DriftProfile:
    """The profile of the training inputs and their labels (per task; "" = unlabelled)."""
    rows = [input_stats(t, spec) for t in inputs]
    if not rows:
        raise ContractError("no training images to take a drift profile from")
    stats = {}
    for name in SERVED_STATS:
        b = Binned.of([r[name] for r in rows])
        stats[name] = BinnedStat(edges=list(b.edges), shares=list(b.shares))
    classes = {}
    for task, values in labels.items():
        seen = [v for v in values if v]
        names = sorted(set(seen))
        classes[task] = {n: round(seen.count(n) / len(seen), 6) for n in names}
    return DriftProfile(images=len(rows), stats=stats, classes=classes)


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
