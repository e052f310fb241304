"""Cross-validated probabilities and cleanlab on features that separate the classes."""

import numpy as np
import pytest

from carinspect.evaluation.label_audit import neighbour_votes, out_of_sample, suspects


@pytest.mark.parametrize("method", ["logistic", "neighbours"])
@pytest.mark.parametrize("classes", [2, 4])
def test_flipped_labels_are_found_out_of_sample(classes: int, method: str) -> None:
    rng = np.random.default_rng(0)
    n = 600
    truth = rng.integers(0, classes, n)
    centres = rng.normal(scale=3.0, size=(classes, 16))
    features = centres[truth] + rng.normal(size=(n, 16))
    given = truth.copy()
    flipped = rng.choice(n, n // 10, replace=False)  # 10% noise
    given[flipped] = (given[flipped] + rng.integers(1, classes, len(flipped))) % classes
    probs = (
        out_of_sample(features, given, folds=5, seed=0)
        if method == "logistic"
        else neighbour_votes(features, given, k=10)
    )
    assert probs.shape == (n, classes) and np.allclose(probs.sum(axis=1), 1.0)
    found = {s.index for s in suspects(given, probs)}
    hits = len(found & set(flipped.tolist()))
    assert hits / len(flipped) >= 0.8 and hits / len(found) >= 0.8, (hits, len(found))
    for s in suspects(given, probs):
        assert s.given == given[s.index] and s.suggested == int(np.argmax(probs[s.index]))


def test_a_row_is_never_scored_by_a_model_that_saw_it() -> None:
    """A photo alone in its corner of feature space gets no help from its own label."""
    rng = np.random.default_rng(1)
    features = np.vstack([rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + 6.0, [[40.0] * 4]])
    labels = np.array([0] * 50 + [1] * 50 + [0])
    probs = out_of_sample(features, labels, folds=5, seed=0)
    assert probs[-1, 1] > 0.9  # fitted without it, the far point looks like class 1


def test_too_few_photos_per_class_for_the_folds_is_refused() -> None:
    with pytest.raises(ValueError, match="cross-validation needs 2 per class"):
        out_of_sample(np.zeros((3, 2)), np.array([0, 0, 1]), folds=5, seed=0)


def test_a_photo_never_votes_for_itself() -> None:
    """Two far clusters; a lone photo of class 0 inside class 1's cluster is outvoted."""
    rng = np.random.default_rng(2)
    features = np.vstack([rng.normal(size=(20, 3)) + 8.0, rng.normal(size=(20, 3)) - 8.0])
    labels = np.array([0] * 20 + [1] * 20)
    labels[25] = 0  # in class 1's cluster
    probs = neighbour_votes(features, labels, k=5)
    assert probs.shape == (40, 2) and np.allclose(probs.sum(axis=1), 1.0)
    assert probs[25, 1] > 0.8  # its own label did not count
    assert {s.index for s in suspects(labels, probs)} == {25}
