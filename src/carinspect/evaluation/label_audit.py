"""Wrong labels: out-of-sample class probabilities by cross-validation, then cleanlab.

cleanlab's confident learning needs, for every photo, class probabilities from a model that did
not train on that photo's label. Two schemes on fixed image features, both out of sample:
:func:`neighbour_votes` (the labels of each photo's nearest neighbours by cosine similarity, the
photo itself left out: the default, the more precise on real photos) and :func:`out_of_sample`
(a logistic regression fitted k times, each time on the other folds). The features come from a backbone chosen by the caller (see the audit stage):
the pretrained weights training starts from have never seen these labels, which keeps the
scheme honest; a fine-tuned backbone has learnt the given labels, wrong ones included, and so
flags fewer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Suspect:
    """A photo whose given label the audit doubts."""

    index: int  # into the photos audited
    given: int
    suggested: int  # the class the out-of-sample probabilities favour
    quality: float  # cleanlab's label quality (self-confidence): low is doubtful


def out_of_sample(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(n, classes) probabilities, each row from a model fitted without that photo."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fewest = int(np.bincount(labels).min()) if len(labels) else 0
    folds = min(folds, fewest)
    if folds < 2:
        raise ValueError(f"a class has {fewest} photo(s): cross-validation needs 2 per class")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs: np.ndarray = cross_val_predict(
        model, features, labels, cv=splitter, method="predict_proba"
    )
    return probs


def neighbour_votes(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(n, classes) probabilities: the share of each class among a photo's ``k`` nearest others.

    Cosine similarity of the features; the photo's own label never counts (leave one out).
    Half a vote per class smooths the shares, so no class is impossible.
    """
    n = len(labels)
    classes = int(labels.max()) + 1 if n else 0
    k = min(k, n - 1)
    if k < 1:
        raise ValueError("the neighbour vote needs at least 2 photos")
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    similar = unit @ unit.T
    np.fill_diagonal(similar, -np.inf)  # never its own neighbour
    nearest = np.argsort(-similar, axis=1, kind="stable")[:, :k]
    votes = np.stack([(labels[nearest] == c).sum(axis=1) for c in range(classes)], axis=1)
    out: np.ndarray = (votes + 0.5) / (k + 0.5 * classes)
    return out


def suspects(labels: np.ndarray, probs: np.ndarray) -> list[Suspect]:
    """The label issues cleanlab finds, most doubtful first."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    found = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    return [
        Suspect(int(i), int(labels[i]), int(np.argmax(probs[i])), round(float(quality[i]), 6))
        for i in found
    ]
