"""Dataset statistics and the shortcut check for the data report.

The shortcut check asks whether a trivial feature of the file, not its content, predicts the
label: a cross-validated logistic regression on image size, aspect ratio and grayscale. A high
AUC means a model can score well without looking at the car (the car-integrity set's damaged
photos are all 640x640 and mostly grayscale, for instance).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from carinspect.data.intake.manifest import ManifestRow

# Feature groups tested alone and together.
SHORTCUT_FEATURES: dict[str, tuple[str, ...]] = {
    "size": ("log_width", "log_height"),
    "aspect_ratio": ("log_aspect",),
    "grayscale": ("grayscale",),
}


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def class_stats(rows: Sequence[ManifestRow]) -> dict[str, dict[str, Any]]:
    """Count, size, aspect, grayscale share and formats per class."""
    out: dict[str, dict[str, Any]] = {}
    for label in sorted({r.label for r in rows}):
        mine = [r for r in rows if r.label == label]
        out[label] = {
            "count": len(mine),
            "width": _summary([r.width for r in mine]),
            "height": _summary([r.height for r in mine]),
            "aspect_ratio": _summary([r.width / r.height for r in mine]),
            "grayscale_fraction": round(sum(r.grayscale for r in mine) / len(mine), 4),
            "formats": dict(sorted(Counter(r.format for r in mine).items())),
        }
    return out


def imbalance_ratio(counts: dict[str, int]) -> float:
    """Largest class count over smallest."""
    return round(max(counts.values()) / max(1, min(counts.values())), 3)


def _features(rows: Sequence[ManifestRow]) -> dict[str, np.ndarray]:
    w = np.array([r.width for r in rows], dtype=np.float64)
    h = np.array([r.height for r in rows], dtype=np.float64)
    return {
        "log_width": np.log(w),
        "log_height": np.log(h),
        "log_aspect": np.log(w / h),
        "grayscale": np.array([r.grayscale for r in rows], dtype=np.float64),
    }


def _cv_auc(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant features inside a fold are expected here
        proba = cross_val_predict(model, x, y, cv=cv, method="predict_proba")
    if proba.shape[1] == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def shortcut_check(
    rows: Sequence[ManifestRow], threshold: float, folds: int, seed: int = 0
) -> dict[str, Any]:
    """Cross-validated AUC of trivial features, alone and together, and whether any is too high."""
    labels = sorted({r.label for r in rows})
    counts = Counter(r.label for r in rows)
    folds = min(folds, min(counts.values()))
    if len(labels) < 2 or folds < 2:
        return {"checked": False, "reason": "needs two classes with at least two images each"}
    y = np.array([labels.index(r.label) for r in rows])
    feats = _features(rows)
    groups = {**SHORTCUT_FEATURES, "all": tuple(n for g in SHORTCUT_FEATURES.values() for n in g)}
    auc: dict[str, float] = {}
    for name, cols in groups.items():
        x = np.column_stack([feats[c] for c in cols])
        value = 0.5 if np.all(x == x[0]) else _cv_auc(x, y, folds, seed)
        auc[name] = round(value, 4) if math.isfinite(value) else 0.5
    flagged = sorted(n for n in SHORTCUT_FEATURES if auc[n] >= threshold)
    if not flagged and auc["all"] >= threshold:
        flagged = ["+".join(SHORTCUT_FEATURES) + " together"]
    return {
        "checked": True,
        "auc": auc,
        "threshold": threshold,
        "folds": folds,
        "warning": bool(flagged),
        "features": flagged,
    }
