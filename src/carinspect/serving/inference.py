"""From bytes to an answer: the same decoding as ingest, the same preprocessing as evaluate."""

from __future__ import annotations

from typing import Any

import numpy as np

from carinspect.data.images import ImageLimits, decode_image
from carinspect.data.preprocess import preprocess
from carinspect.evaluation.decision import UNCERTAIN, decide_from_spec
from carinspect.serving.model_store import LoadedModel

UNCERTAIN_LABEL = "uncertain"


def pixels_for(data: bytes, model: LoadedModel, limits: ImageLimits) -> np.ndarray:
    """Decode ``data`` (content sniffed, EXIF applied, any mode to RGB) and preprocess it.

    Decoded as ingest decoded the training images: reduced to the model's
    ``source_short_side`` in the decoder when there is one.

    Raises :class:`carinspect.data.images.ImageError` naming the problem.
    """
    decoded = decode_image(data, limits, model.spec.source_short_side)
    return preprocess(decoded.image, model.spec)


def thresholds_of(decision: dict[str, Any]) -> dict[str, Any]:
    """The part of a decision rule that a caller needs to read an answer."""
    keys: tuple[str, ...] = ("min_confidence", "per_class")
    if decision.get("task") == "binary":
        keys = ("positive_class", "t_low", "t_high")
    return {k: decision[k] for k in keys if k in decision}


def task_answer(probs: np.ndarray, classes: list[str], decision: dict[str, Any]) -> dict[str, Any]:
    """Label, confidence, probabilities and rule of one task from its probability row."""
    index = int(decide_from_spec(probs[None, :], decision, classes)[0])
    if index == UNCERTAIN:
        label, confidence = UNCERTAIN_LABEL, float(probs.max())
    else:
        label, confidence = classes[index], float(probs[index])
    return {
        "label": label,
        "confidence": round(confidence, 6),
        "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs, strict=True)},
        "thresholds": thresholds_of(decision),
    }


def answer(model: LoadedModel, probs: np.ndarray) -> dict[str, Any]:
    """The answer for one row of :meth:`LoadedModel.probabilities`.

    One task: label, confidence, probabilities and rule at the top level (the seed service's
    shape). Several: the same four under ``tasks``, keyed by task name.
    """
    which = {"name": model.ref.name, "version": model.version, "alias": model.ref.alias}
    if not model.multitask:
        return {**task_answer(probs, model.classes, model.decision), "model": which}
    return {
        "tasks": {
            t.name: task_answer(probs[t.columns], t.classes, t.decision) for t in model.tasks
        },
        "model": which,
    }
