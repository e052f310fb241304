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


def answer(model: LoadedModel, probs: np.ndarray) -> dict[str, Any]:
    """Label, confidence, probabilities and rule for one probability row."""
    index = int(decide_from_spec(probs[None, :], model.decision, model.classes)[0])
    if index == UNCERTAIN:
        label, confidence = UNCERTAIN_LABEL, float(probs.max())
    else:
        label, confidence = model.classes[index], float(probs[index])
    return {
        "label": label,
        "confidence": round(confidence, 6),
        "probabilities": {c: round(float(p), 6) for c, p in zip(model.classes, probs, strict=True)},
        "thresholds": thresholds_of(model.decision),
        "model": {
            "name": model.ref.name,
            "version": model.version,
            "alias": model.ref.alias,
        },
    }
