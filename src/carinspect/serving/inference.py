"""From bytes to an answer: the same decoding as ingest, the same preprocessing as evaluate."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from carinspect.data.decoding.images import ImageLimits, OpenedImage, open_image
from carinspect.data.loading.preprocess import preprocess
from carinspect.drift.profile import photo_stats
from carinspect.evaluation.decision import UNCERTAIN, decide_from_spec
from carinspect.evaluation.heatmap import heatmap, png
from carinspect.serving.loaded import LoadedModel, PhotoScores

UNCERTAIN_LABEL = "uncertain"


def pixels_for(data: bytes, model: LoadedModel, limits: ImageLimits) -> np.ndarray:
    """Decode ``data`` (content sniffed, EXIF applied, any mode to RGB) and preprocess it.

    Decoded as ingest decoded the training images: reduced to the model's
    ``source_short_side`` in the decoder when there is one.

    Raises :class:`carinspect.data.decoding.images.ImageError` naming the problem.
    """
    return prepare(data, model, limits)[0]


def prepare(
    data: bytes, model: LoadedModel, limits: ImageLimits
) -> tuple[np.ndarray, dict[str, float] | None]:
    """:func:`pixels_for`, and the photo's drift statistics when the model keeps a window."""
    return finish(opened_for(data, model, limits), model)


def opened_for(data: bytes, model: LoadedModel, limits: ImageLimits) -> OpenedImage:
    """The upload's header checked for ``model`` (no pixels yet): its cost is known here."""
    return open_image(data, limits, model.spec.source_short_side)


def finish(opened: OpenedImage, model: LoadedModel) -> tuple[np.ndarray, dict[str, float] | None]:
    """Decode an opened upload and preprocess it; its drift statistics if the model keeps any."""
    decoded = opened.decode()
    pixels = preprocess(decoded.image, model.spec)
    if model.drift is None:
        return pixels, None
    return pixels, photo_stats(pixels, model.spec, decoded.width, decoded.height)


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


@dataclass(frozen=True)
class Answer:
    """One photo answered: what the client gets (``body``) and each task's label.

    Drift, feedback and the shadow read ``labels``; nothing parses ``body`` back.
    """

    body: dict[str, Any]
    labels: dict[str, str]


def answer(model: LoadedModel, scores: PhotoScores, size: tuple[int, int] | None = None) -> Answer:
    """The answer for one photo's scores (:meth:`LoadedModel.infer`).

    One task: label, confidence, probabilities and rule at the top level (the seed service's
    shape). Several: the same four under ``tasks``, keyed by task name. With MC dropout on,
    each answer gains ``uncertainty``: the mean and spread of the sampled probabilities (the
    label still comes from the deterministic ones, which the decision rule was tuned on).
    With the class activation maps in ``scores`` and the photo's ``size`` (width, height, as
    served), each answer gains ``explanation``: the heatmap of its label (of the top class
    when the answer is uncertain).
    """
    which = {"name": model.ref.name, "version": model.version, "alias": model.ref.alias}
    answers = {}
    for t in model.tasks:
        got = task_answer(scores.probs[t.columns], t.classes, t.decision)
        if model.mc is not None and scores.mc_mean is not None and scores.mc_std is not None:
            mean, std = scores.mc_mean[t.columns], scores.mc_std[t.columns]
            got["uncertainty"] = {
                "samples": model.mc.samples,
                "mean": {c: round(float(v), 6) for c, v in zip(t.classes, mean, strict=True)},
                "std": {c: round(float(v), 6) for c, v in zip(t.classes, std, strict=True)},
            }
        if scores.maps is not None and size is not None:
            got["explanation"] = explanation(scores.maps[t.columns], t.classes, got, model, size)
        answers[t.name] = got
    labels = {name: str(got["label"]) for name, got in answers.items()}
    if not model.multitask:
        return Answer({**answers[model.tasks[0].name], "model": which}, labels)
    return Answer({"tasks": answers, "model": which}, labels)


def shown_class(got: dict[str, Any], classes: list[str]) -> str:
    """The class an answer's heatmap shows: its label, or the top class of an uncertain one."""
    label = str(got["label"])
    if label in classes:
        return label
    probabilities: dict[str, float] = got["probabilities"]
    return max(probabilities, key=lambda c: probabilities[c])


def explanation(
    maps: np.ndarray, classes: list[str], got: dict[str, Any], model: LoadedModel,
    size: tuple[int, int],
) -> dict[str, Any]:  # fmt: skip
    """The heatmap of the class a task answered: a PNG (base64) aligned with the photo."""
    shown = shown_class(got, classes)
    image = heatmap(maps[classes.index(shown)], size[0], size[1], model.spec)
    return {"label": shown, "width": image.width, "height": image.height,
            "heatmap_png": base64.b64encode(png(image)).decode("ascii")}  # fmt: skip
