"""PNG plots of an evaluation: confusion matrices, PR and ROC curves, reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

from carinspect.evaluation.threshold import LabelCurve, confidence_curve


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(
    labels: np.ndarray, pred: np.ndarray, classes: Sequence[str], title: str, path: Path
) -> None:
    """Counts and row-normalised confusion matrices side by side."""
    plt = _pyplot()
    counts = skm.confusion_matrix(labels, pred, labels=list(range(len(classes))))
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.6 * len(classes)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, mat, fmt, name in (
        (axes[0], counts, "d", "counts"),
        (axes[1], norm, ".2f", "normalised by true class"),
    ):
        ax.imshow(mat, cmap="Blues", vmin=0)
        for (i, j), v in np.ndenumerate(mat):
            ax.text(
                j,
                i,
                format(v, fmt),
                ha="center",
                va="center",
                color="white" if v > mat.max() / 2 else "black",
            )
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_png(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str, path: Path
) -> None:
    """One-vs-rest precision-recall and ROC curves of every class present in ``labels``."""
    plt = _pyplot()
    fig, (pr_ax, roc_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for k, name in enumerate(classes):
        y = labels == k
        if y.all() or not y.any():
            continue
        precision, recall, _ = skm.precision_recall_curve(y, probs[:, k])
        fpr, tpr, _ = skm.roc_curve(y, probs[:, k])
        ap = skm.average_precision_score(y, probs[:, k])
        pr_ax.plot(recall, precision, label=f"{name} (AP {ap:.3f})")
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {skm.auc(fpr, tpr):.3f})")
    roc_ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    pr_ax.set(
        xlabel="recall",
        ylabel="precision",
        title=f"{title}: precision-recall",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}: ROC")
    pr_ax.legend(loc="lower left")
    roc_ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reliability_png(
    probs_before: np.ndarray,
    probs_after: np.ndarray,
    labels: np.ndarray,
    n_bins: int,
    title: str,
    path: Path,
) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    plt = _pyplot()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for probs, name in ((probs_before, "uncalibrated"), (probs_after, "temperature-scaled")):
        conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
        idx = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
        xs, ys = [], []
        for b in range(n_bins):
            mask = idx == b
            if mask.any():
                xs.append(conf[mask].mean())
                ys.append(correct[mask].mean())
        ax.plot(xs, ys, marker="o", label=name)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    ax.set(
        xlabel="confidence",
        ylabel="accuracy",
        title=f"{title}: reliability",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def binary_threshold_png(
    curve: LabelCurve, positive: str, spec: dict[str, Any], path: Path
) -> None:
    """Precision and recall of the positive answer against its threshold (val), with the band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.step(curve.threshold, curve.precision, where="pre", label="precision")
    ax.step(curve.threshold, curve.recall, where="pre", label="recall")
    target = spec["target_precision"]
    ax.axhline(target, ls=":", c="grey", label=f"target precision {target:g}")
    ax.axvspan(spec["t_low"], spec["t_high"], color="orange", alpha=0.2, label="uncertain band")
    ax.axvline(spec["threshold"], c="red", lw=1, label=f"threshold {spec['threshold']:.3f}")
    ax.set(
        xlabel=f"p({positive})",
        ylabel="value",
        title="val: precision and recall vs threshold",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def multiclass_threshold_png(
    probs: np.ndarray,
    labels: np.ndarray,
    curves: dict[str, LabelCurve],
    min_confidence: float,
    path: Path,
    max_classes: int = 10,
) -> None:
    """The multiclass decision rule's trade-offs on val.

    Left: coverage and accuracy against the minimum confidence. Right: precision of each
    predicted class against its own minimum (the ``max_classes`` most predicted classes).
    """
    plt = _pyplot()
    t, coverage, accuracy = confidence_curve(probs, labels)
    fig, (ax, cls_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax.step(t, accuracy, where="pre", label="accuracy of the answered")
    ax.step(t, coverage, where="pre", label="coverage")
    ax.axvline(min_confidence, c="red", lw=1, label=f"min confidence {min_confidence:g}")
    ax.set(xlabel="minimum confidence", ylabel="value", title="val: all classes", xlim=(0, 1))
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    counts = {name: int(c.coverage[0] * len(labels)) if len(c.coverage) else 0
              for name, c in curves.items()}  # fmt: skip
    for name in sorted(curves, key=lambda n: -counts[n])[:max_classes]:
        c = curves[name]
        cls_ax.step(c.threshold, c.precision, where="pre", label=name)
    cls_ax.set(
        xlabel="minimum probability of the predicted class",
        ylabel="precision",
        title="val: precision per predicted class",
        xlim=(0, 1),
    )
    cls_ax.set_ylim(0, 1.02)
    cls_ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
