"""The verdict: is the model better than always answering the most frequent training class.

A paired bootstrap over the test photos gives the interval of the difference between the
model's figure and the baseline's on the same resampled photos; a model whose interval reaches
0 is not shown better. A temperature outside a sane range says calibration collapsed: the
logits carried no signal on val, and every calibrated answer sits near the class prior.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from carinspect.config import EvaluateConfig
from carinspect.contracts.evaluation import TaskVerdict

LEVEL = 0.95
_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1"}


def _score(metric: str, k: int) -> Callable[[np.ndarray, np.ndarray], float]:
    """``metric(labels, predicted)`` over the classes present in ``labels``."""

    def score(y: np.ndarray, p: np.ndarray) -> float:
        if metric == "accuracy":
            return float((y == p).mean())
        truth = np.bincount(y, minlength=k)
        said = np.bincount(p, minlength=k)
        hits = np.bincount(y[y == p], minlength=k)
        present = truth > 0
        recall = hits[present] / truth[present]
        if metric == "balanced_accuracy":
            return float(recall.mean())
        precision = np.divide(hits, said, out=np.zeros(k), where=said > 0)[present]
        total = precision + recall
        f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
        return float(f1.mean())

    return score


def _interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [(1 - LEVEL) / 2 * 100, (1 + LEVEL) / 2 * 100])
    return round(float(lo), 6), round(float(hi), 6)


def judge(
    task: str,
    probs: np.ndarray,
    labels: np.ndarray,
    train_labels: Sequence[int],
    classes: Sequence[str],
    temperature: float,
    cfg: EvaluateConfig,
) -> TaskVerdict:
    """The verdict of one task on the test split (``probs`` calibrated, ``labels`` its truth)."""
    k = len(classes)
    majority = Counter(train_labels).most_common(1)[0][0]
    y = labels.astype(np.int64)
    pred = probs.argmax(axis=1).astype(np.int64)
    base = np.full_like(y, majority)
    score = _score(cfg.verdict_metric, k)
    rng = np.random.default_rng(cfg.seed)
    draws = np.empty((cfg.bootstrap, 2))
    for i in range(cfg.bootstrap):
        idx = rng.integers(0, len(y), len(y))
        draws[i] = score(y[idx], pred[idx]), score(y[idx], base[idx])
    model, baseline = score(y, pred), score(y, base)
    name = _NAMES[cfg.verdict_metric]
    diff_lo, diff_hi = _interval(draws[:, 0] - draws[:, 1])
    n = len(y)
    always = f"always answering {classes[majority]!r}"
    problems: list[str] = []
    if model <= baseline:
        problems.append(
            f"no better than {always}: test {name} {model:.3f} vs {baseline:.3f} on {n} photos"
        )
    elif diff_lo <= 0:
        problems.append(
            f"not shown better than {always}: test {name} {model:.3f} vs {baseline:.3f}, the "
            f"{LEVEL:.0%} interval of the difference [{diff_lo:+.3f}, {diff_hi:+.3f}] reaches 0 "
            f"on {n} photos"
        )
    low, high = cfg.temperature_range
    if not low <= temperature <= high:
        problems.append(
            f"calibration collapsed: temperature {temperature:.4g} is outside [{low:g}, {high:g}] "
            "(the scores carry little signal on val; calibrated answers sit near the class prior)"
        )
    model_lo, model_hi = _interval(draws[:, 0])
    warnings: list[str] = []
    if n < cfg.small_sample:
        warnings.append(
            f"only {n} test photos (fewer than evaluate.small_sample {cfg.small_sample}): "
            f"figures are rough; {name} {model:.2f} has a {LEVEL:.0%} interval "
            f"[{model_lo:.2f}, {model_hi:.2f}]"
        )
    return TaskVerdict(
        task=task,
        metric=cfg.verdict_metric,
        images=n,
        model=round(model, 6),
        model_interval=(model_lo, model_hi),
        baseline=round(baseline, 6),
        baseline_class=classes[majority],
        difference=round(model - baseline, 6),
        difference_interval=(diff_lo, diff_hi),
        temperature=round(float(temperature), 6),
        problems=problems,
        warnings=warnings,
    )


def describe(v: TaskVerdict) -> str:
    """The verdict in one line: what the model scored against the baseline, and the outcome."""
    name = _NAMES.get(v.metric, v.metric)
    lo, hi = v.model_interval
    dlo, dhi = v.difference_interval
    outcome = "better than" if v.passed else "NOT better than"
    return (
        f"{outcome} always answering {v.baseline_class!r}: test {name} {v.model:.3f} "
        f"[{lo:.3f}, {hi:.3f}] vs {v.baseline:.3f} on {v.images} photos (difference "
        f"{v.difference:+.3f}, {LEVEL:.0%} interval [{dlo:+.3f}, {dhi:+.3f}]; temperature "
        f"{v.temperature:.3g})"
    )
