"""Decisions from probabilities: the rule model.json carries, applied by export and serving.

numpy only, so the serving process does not import scikit-learn or torch for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

UNCERTAIN = -1


def decide_binary(scores: np.ndarray, t_low: float, t_high: float) -> np.ndarray:
    """1 (positive) at or above T_HIGH, 0 below T_LOW, UNCERTAIN in between."""
    out = np.full(len(scores), UNCERTAIN)
    out[scores >= t_high] = 1
    out[scores < t_low] = 0
    return out


def decide_multiclass(
    probs: np.ndarray, min_confidence: float, per_class: np.ndarray
) -> np.ndarray:
    """Predicted class, or UNCERTAIN when its probability is below the global or its own minimum."""
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    need = np.maximum(min_confidence, per_class[pred])
    return np.where(conf >= need, pred, UNCERTAIN)


def decide_from_spec(probs: np.ndarray, spec: dict[str, Any], classes: list[str]) -> np.ndarray:
    """Class index or UNCERTAIN for each row, by the rule in threshold.json / model.json."""
    if spec["task"] == "binary":
        k = classes.index(spec["positive_class"])
        d = decide_binary(probs[:, k], spec["t_low"], spec["t_high"])
        other = 1 - k
        return np.where(d == 1, k, np.where(d == 0, other, UNCERTAIN))
    per_class = np.array([spec.get("per_class", {}).get(c, 0.0) for c in classes])
    return decide_multiclass(probs, spec.get("min_confidence", 0.0), per_class)
