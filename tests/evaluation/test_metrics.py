import itertools

import numpy as np
import pytest
from sklearn import metrics as skm

from carinspect.evaluation.calibration import fit_temperature, nll, softmax
from carinspect.evaluation.metrics import (
    classification_report,
    expected_calibration_error,
    majority_baseline,
)


def constructed(n: int = 300, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += 1.5  # informative but imperfect
    return softmax(logits), labels


def test_metrics_equal_scikit_learn() -> None:
    probs, labels = constructed()
    classes = ["a", "b", "c"]
    report = classification_report(probs, labels, classes)
    pred = probs.argmax(1)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    assert report["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    assert report["weighted_f1"] == pytest.approx(skm.f1_score(labels, pred, average="weighted"))
    assert report["macro_precision"] == pytest.approx(
        skm.precision_score(labels, pred, average="macro")
    )
    assert report["auroc_macro"] == pytest.approx(
        skm.roc_auc_score(labels, probs, multi_class="ovr")
    )
    assert report["log_loss"] == pytest.approx(skm.log_loss(labels, probs))
    assert report["per_class"]["b"]["recall"] == pytest.approx(
        skm.recall_score(labels, pred, average=None)[1]
    )
    assert report["per_class"]["c"]["support"] == int((labels == 2).sum())


def test_ece_matches_its_definition() -> None:
    probs, labels = constructed(seed=1)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, 11)
    expected = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            expected += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(expected, abs=1e-6)


def test_binary_auroc_and_missing_class() -> None:
    probs, labels = constructed(k=2)
    report = classification_report(probs, labels, ["neg", "pos"])
    assert report["per_class"]["pos"]["auroc"] == pytest.approx(
        skm.roc_auc_score(labels, probs[:, 1])
    )
    only_zero = classification_report(probs[labels == 0], labels[labels == 0], ["neg", "pos"])
    assert only_zero["per_class"]["pos"]["auroc"] is None


def test_majority_baseline() -> None:
    base = majority_baseline([0, 0, 0, 1], np.array([0, 1, 1, 1]), 2)
    assert base["accuracy"] == 0.25 and base["balanced_accuracy"] == 0.5


def test_temperature_fixes_an_over_confident_model() -> None:
    rng = np.random.default_rng(2)
    true_logits = rng.normal(0, 1.5, (4000, 3))
    true_probs = softmax(true_logits)
    labels = np.array([rng.choice(3, p=p) for p in true_probs])  # calibrated by construction
    logits = true_logits * 4.0  # same ranking, far too confident
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(4.0, rel=0.15)
    assert nll(logits, labels, t) < nll(logits, labels) * 0.7
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, t), labels)
    assert after < before / 2
