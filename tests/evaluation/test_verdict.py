"""The verdict: a model against always answering the most frequent class, on the same photos."""

import numpy as np
import pytest
from sklearn import metrics as skm

from carinspect.config import EvaluateConfig
from carinspect.evaluation.verdict import _score, describe, judge

CLASSES = ["pickup", "sedan", "van"]


def _probs(pred: np.ndarray, k: int, confidence: float = 0.8) -> np.ndarray:
    p = np.full((len(pred), k), (1 - confidence) / (k - 1))
    p[np.arange(len(pred)), pred] = confidence
    return p


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "macro_f1"])
def test_scores_agree_with_scikit_learn(metric: str) -> None:
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    p[:20] = 0  # some imbalance in the answers
    expected = {
        "accuracy": skm.accuracy_score(y, p),
        "balanced_accuracy": skm.balanced_accuracy_score(y, p),
        "macro_f1": skm.f1_score(y, p, average="macro"),
    }[metric]
    assert _score(metric, 3)(y, p) == pytest.approx(expected)


def test_a_good_model_passes_and_says_so() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    pred = np.where(rng.random(90) < 0.9, y, (y + 1) % 3)
    v = judge("label", _probs(pred, 3), y, [0, 0, 1, 2], CLASSES, 1.3, EvaluateConfig())
    assert v.passed and not v.warnings
    assert v.baseline == pytest.approx(1 / 3) and v.baseline_class == "pickup"
    assert v.difference_interval[0] > 0.4
    assert describe(v).startswith("better than always answering 'pickup': test balanced")


def test_a_model_that_answers_the_majority_is_no_better() -> None:
    y = np.array([0, 1, 2] * 20)
    v = judge(
        "label", _probs(np.zeros(60, int), 3), y, [0, 1, 2, 0], CLASSES, 1.0, EvaluateConfig()
    )
    assert not v.passed
    assert v.problems == [
        "no better than always answering 'pickup': test balanced accuracy 0.333 vs 0.333 on 60 "
        "photos"
    ]
    assert describe(v).startswith("NOT better than")


def test_random_answers_are_not_shown_better_and_a_collapsed_temperature_is_named() -> None:
    rng = np.random.default_rng(3)
    y, pred = rng.integers(0, 2, 40), rng.integers(0, 2, 40)
    v = judge("label", _probs(pred, 2), y, [0, 1, 1], ["clean", "dirty"], 87935.0, EvaluateConfig())
    assert not v.passed
    assert any("better than always answering 'dirty'" in p for p in v.problems)
    assert any(p.startswith("calibration collapsed: temperature 8.794e+04") for p in v.problems)


def test_a_small_test_split_is_a_warning_with_the_interval() -> None:
    y = np.array([0, 1] * 6)
    v = judge("label", _probs(y, 2), y, [0, 1], ["a", "b"], 1.0, EvaluateConfig())
    assert v.passed  # twelve right answers of twelve: shown better even so
    assert v.warnings and v.warnings[0].startswith("only 12 test photos (fewer than")
    assert "95% interval [1.00, 1.00]" in v.warnings[0]
