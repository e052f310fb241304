import numpy as np
import pytest

from carinspect.evaluation import decision
from carinspect.evaluation import threshold as th


def scores(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    positives = rng.random(n) < 0.4
    s = np.clip(np.where(positives, rng.normal(0.7, 0.15, n), rng.normal(0.35, 0.15, n)), 0, 1)
    return s, positives


def test_threshold_reaches_target_with_highest_recall() -> None:
    s, pos = scores()
    choice = th.precision_threshold(s, pos, 0.95)
    assert choice.reached and choice.precision >= 0.95
    assert choice.precision == pytest.approx(pos[s >= choice.threshold].mean())
    assert choice.recall == pytest.approx((pos & (s >= choice.threshold)).sum() / pos.sum())
    # brute force: no threshold with precision >= 0.95 has a higher recall
    for t in np.unique(s):
        picked = s >= t
        if pos[picked].mean() >= 0.95:
            assert (pos & picked).sum() / pos.sum() <= choice.recall + 1e-12


def test_unreachable_target_reports_best_precision() -> None:
    s, pos = scores()
    s = np.where(pos, s, s + 0.05)  # one negative always outranks every positive at the top
    s[np.argmax(s)], pos[np.argmax(s)] = 1.5, False
    choice = th.precision_threshold(s, pos, 1.0)
    assert not choice.reached
    assert choice.best_precision < 1.0 and choice.precision == choice.best_precision


def test_band_from_coverage_and_decisions() -> None:
    s, pos = scores()
    t_high = th.precision_threshold(s, pos, 0.9).threshold
    t_low = th.band_from_coverage(s, t_high, 0.8)
    d = decision.decide_binary(s, t_low, t_high)
    assert (d == decision.UNCERTAIN).mean() == pytest.approx(0.2, abs=0.002)
    assert (d[s >= t_high] == 1).all() and (d[s < t_low] == 0).all()
    summary = th.binary_summary(s, pos, t_low, t_high)
    assert summary["coverage"] == pytest.approx(0.8, abs=0.002)
    assert th.band_from_coverage(s, t_high, 1.0) == t_high


def test_multiclass_min_confidence_and_per_class() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6]])
    d = decision.decide_multiclass(probs, 0.5, np.array([0.0, 0.8, 0.0]))
    assert d.tolist() == [0, decision.UNCERTAIN, decision.UNCERTAIN, 2]
    summary = th.multiclass_summary(probs, np.array([0, 1, 1, 0]), 0.5, np.zeros(3))
    assert summary["coverage"] == 0.75 and summary["accuracy"] == pytest.approx(2 / 3)


def test_bootstrap_interval_contains_the_estimate() -> None:
    s, pos = scores(500)
    ci = th.bootstrap_ci(lambda i: th.binary_summary(s[i], pos[i], 0.4, 0.6), len(s), 300, seed=1)
    point = th.binary_summary(s, pos, 0.4, 0.6)
    for key in ("precision", "recall", "coverage"):
        lo, hi = ci[key]
        assert lo <= point[key] <= hi and hi - lo < 0.2
    assert ci == th.bootstrap_ci(
        lambda i: th.binary_summary(s[i], pos[i], 0.4, 0.6), len(s), 300, seed=1
    )
