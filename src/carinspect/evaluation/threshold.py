"""Operating-point search and the decisions it implies (binary band, multiclass confidence)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

from carinspect.evaluation.decision import (
    UNCERTAIN,
    decide_binary,
    decide_multiclass,
)


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold on the positive score and how it does on the data it was chosen on."""

    threshold: float
    precision: float
    recall: float
    reached: bool
    best_precision: float


def precision_threshold(
    scores: np.ndarray, positives: np.ndarray, target: float
) -> ThresholdChoice:
    """Lowest threshold (highest recall) whose precision reaches ``target``.

    When no threshold reaches it, returns the most precise one with ``reached=False``. The
    threshold is placed halfway between the chosen score and the next lower one: the same
    decisions on these scores, but no image sits on the boundary, where the last bits of float
    arithmetic (ONNX against PyTorch, another CPU) could flip it.
    """
    precision, recall, thresholds = skm.precision_recall_curve(positives, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    ok = np.flatnonzero(precision >= target)
    best = float(precision.max())
    reached = bool(len(ok))
    # thresholds ascend and recall descends: the first qualifying threshold has the most recall
    i = int(ok[0]) if reached else int(np.flatnonzero(precision == best)[0])
    below = float(thresholds[i - 1]) if i > 0 else 0.0
    cut = (below + float(thresholds[i])) / 2
    return ThresholdChoice(cut, float(precision[i]), float(recall[i]), reached, best)


def band_from_coverage(scores: np.ndarray, t_high: float, coverage: float) -> float:
    """T_LOW such that about ``1 - coverage`` of ``scores`` fall in the uncertain band [T_LOW, T_HIGH)."""
    below = np.sort(scores[scores < t_high])
    n_uncertain = min(len(below), math.floor((1.0 - coverage) * len(scores) + 1e-9))
    if n_uncertain == 0:
        return t_high
    j = len(below) - n_uncertain  # below[j:] are uncertain; cut halfway to the next lower score
    lower = float(below[j - 1]) if j > 0 else 0.0
    return (lower + float(below[j])) / 2


def binary_summary(
    scores: np.ndarray, positives: np.ndarray, t_low: float, t_high: float
) -> dict[str, float]:
    """Precision and recall of the positive decision, precision of the negative one, coverage."""
    d = decide_binary(scores, t_low, t_high)
    pos, neg = d == 1, d == 0
    n_pos = positives.sum()
    return {
        "precision": float(positives[pos].mean()) if pos.any() else math.nan,
        "recall": float((positives & pos).sum() / n_pos) if n_pos else math.nan,
        "negative_precision": float((~positives[neg]).mean()) if neg.any() else math.nan,
        "coverage": float((d != UNCERTAIN).mean()),
    }


def multiclass_summary(
    probs: np.ndarray, labels: np.ndarray, min_confidence: float, per_class: np.ndarray
) -> dict[str, float]:
    """Coverage and accuracy / macro-F1 of the decided images."""
    d = decide_multiclass(probs, min_confidence, per_class)
    decided = d != UNCERTAIN
    if not decided.any():
        return {"coverage": 0.0, "accuracy": math.nan, "macro_f1": math.nan}
    return {
        "coverage": float(decided.mean()),
        "accuracy": float((d[decided] == labels[decided]).mean()),
        "macro_f1": float(
            skm.f1_score(labels[decided], d[decided], average="macro", zero_division=0)
        ),
    }


def bootstrap_ci(
    summary: Callable[[np.ndarray], dict[str, float]],
    n: int,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile intervals of every figure ``summary(indices)`` returns, over ``resamples`` draws."""
    if resamples == 0:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        for k, v in summary(rng.integers(0, n, n)).items():
            draws.setdefault(k, []).append(v)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out = {}
    for k, values in draws.items():
        arr = np.array(values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        out[k] = (
            [float(np.percentile(arr, lo)), float(np.percentile(arr, hi))]
            if len(arr)
            else [math.nan] * 2
        )
    return out


@dataclass(frozen=True)
class LabelCurve:
    """How "answer class k when p_k >= t" does for every distinct threshold t (ascending)."""

    threshold: np.ndarray
    precision: np.ndarray  # of the images answered k, the share that are k
    recall: np.ndarray  # of the images that are k, the share answered k
    coverage: np.ndarray  # of all images, the share answered k


def label_curve(probs: np.ndarray, labels: np.ndarray, k: int, *, top_only: bool) -> LabelCurve:
    """The precision/recall/coverage curve of answering class ``k`` above a threshold.

    Binary rule (``top_only=False``): an image is answered k when ``p_k >= t``. Multiclass rule
    (``top_only=True``): k must also be the most probable class, as in ``decide_multiclass``,
    so the curve is what ``threshold.per_class[k] = t`` would give.
    """
    scores = probs[:, k]
    eligible = probs.argmax(axis=1) == k if top_only else np.ones(len(scores), dtype=bool)
    order = np.argsort(scores[eligible], kind="stable")
    s, hit = scores[eligible][order], (labels[eligible] == k)[order]
    t = np.unique(s)
    first = np.searchsorted(s, t, side="left")  # images answered k at t: s[first:]
    hits_from = np.concatenate([np.cumsum(hit[::-1])[::-1], [0]])
    answered = len(s) - first
    tp = hits_from[first]
    positives = max(int((labels == k).sum()), 1)
    return LabelCurve(
        threshold=t,
        precision=tp / np.maximum(answered, 1),
        recall=tp / positives,
        coverage=answered / max(len(scores), 1),
    )


def confidence_curve(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """(min confidence, coverage, accuracy of the answered) for every distinct top probability.

    What ``threshold.min_confidence`` trades: a higher minimum answers fewer images, better.
    """
    conf = probs.max(axis=1)
    order = np.argsort(conf, kind="stable")
    c, correct = conf[order], (probs.argmax(axis=1) == labels)[order]
    t = np.unique(c)
    first = np.searchsorted(c, t, side="left")
    correct_from = np.concatenate([np.cumsum(correct[::-1])[::-1], [0]])
    answered = len(c) - first
    return t, answered / max(len(c), 1), correct_from[first] / np.maximum(answered, 1)
