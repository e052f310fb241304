"""Classification metrics from predicted probabilities (scikit-learn and torchmetrics do the math)."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm
from torchmetrics.functional.classification import multiclass_calibration_error


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE (L1) over ``n_bins`` equal-width confidence bins."""
    return float(
        multiclass_calibration_error(
            torch.as_tensor(probs, dtype=torch.float64),
            torch.as_tensor(labels, dtype=torch.long),
            num_classes=probs.shape[1],
            n_bins=n_bins,
            norm="l1",
        )
    )


def _auroc(probs: np.ndarray, labels: np.ndarray, k: int) -> float | None:
    present = labels == k
    if present.all() or not present.any():
        return None  # undefined when the split has no negatives or no positives
    return float(skm.roc_auc_score(present, probs[:, k]))


def classification_report(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], n_bins: int = 15
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class/macro/weighted P-R-F1, one-vs-rest AUROC, log loss, ECE."""
    k = len(classes)
    pred = probs.argmax(axis=1)
    all_labels = list(range(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes absent from a small split
        p, r, f, support = skm.precision_recall_fscore_support(
            labels, pred, labels=all_labels, zero_division=0
        )
        balanced = float(skm.balanced_accuracy_score(labels, pred))
    per_class = {
        c: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "auroc": _auroc(probs, labels, i),
            "support": int(support[i]),
        }
        for i, c in enumerate(classes)
    }
    aurocs = [v["auroc"] for v in per_class.values() if v["auroc"] is not None]
    weights = support / max(1, support.sum())
    return {
        "images": len(labels),
        "accuracy": float(skm.accuracy_score(labels, pred)),
        "balanced_accuracy": balanced,
        "macro_precision": float(p.mean()),
        "macro_recall": float(r.mean()),
        "macro_f1": float(f.mean()),
        "weighted_f1": float((f * weights).sum()),
        "auroc_macro": float(np.mean(aurocs)) if aurocs else None,
        "log_loss": float(skm.log_loss(labels, probs, labels=all_labels)),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "per_class": per_class,
    }


def majority_baseline(
    train_labels: Sequence[int], labels: np.ndarray, num_classes: int
) -> dict[str, float]:
    """What always predicting the most frequent training class scores on ``labels``."""
    majority = Counter(train_labels).most_common(1)[0][0]
    pred = np.full(len(labels), majority)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "accuracy": float(skm.accuracy_score(labels, pred)),
            "balanced_accuracy": float(skm.balanced_accuracy_score(labels, pred)),
            "macro_f1": float(
                skm.f1_score(
                    labels, pred, labels=list(range(num_classes)), average="macro", zero_division=0
                )
            ),
        }
