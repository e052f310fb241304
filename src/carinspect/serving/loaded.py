"""A model ready to serve, what names it (MODEL_URI), and the scores it gives a batch.

Opening a model folder into one is serving/opening.py; following the registry and swapping
versions is serving/model_store.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from carinspect.contracts.onnx_names import CAM, FEATURES, INPUT, MASK, OUTPUTS
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.drift.profile import EMBEDDING, DriftWindow, EmbeddingRef
from carinspect.errors import InputError


class ModelLoadError(InputError):
    """A model that cannot be served: the message says which and why."""


class NotThereYet(ModelLoadError):
    """MODEL_URI's registered model or alias does not exist (yet): nothing to load, no failure."""


@dataclass(frozen=True)
class ModelRef:
    """What MODEL_URI names: a registered model by alias or version, or a local folder."""

    uri: str
    name: str | None = None
    alias: str | None = None
    version: str | None = None
    folder: Path | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
        """``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a folder path."""
        if uri.startswith("models:/"):
            rest = uri.removeprefix("models:/").strip("/")
            if "@" in rest:
                name, alias = rest.split("@", 1)
                if name and alias and "/" not in alias:
                    return cls(uri, name=name, alias=alias)
            elif rest.count("/") == 1:
                name, version = rest.split("/")
                if name and version.isdigit():
                    return cls(uri, name=name, version=version)
            raise ModelLoadError(
                f"MODEL_URI={uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>"
            )
        folder = Path(uri.removeprefix("file://"))
        return cls(uri, folder=folder)


@dataclass(frozen=True)
class ServedTask:
    """One answer the model gives: its classes, decision rule, graph output and columns."""

    name: str
    classes: list[str]
    decision: dict[str, Any]
    output: str
    columns: slice  # its block of the rows :meth:`LoadedModel.probabilities` returns


@dataclass
class McSampler:
    """Monte Carlo dropout over the pooled features: K masked passes of the classifier head.

    The backbone runs once per image; the head runs on K copies of its features, each with a
    fresh dropout mask (keep with probability 1 - rate, scaled by 1/keep, as dropout trains).
    Because the models' only dropout sits before the classifier, this is the same distribution
    as K full stochastic passes, at the cost of K small matrix products.
    """

    session: Any
    rate: float
    samples: int
    outputs: list[str]
    rng: np.random.Generator
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation over the K samples of each probability, per image."""
        n, width = features.shape
        tiled = np.broadcast_to(features, (self.samples, n, width)).reshape(-1, width)
        keep = 1.0 - self.rate
        with self.lock:  # numpy generators are not thread-safe
            mask = (self.rng.random(tiled.shape, dtype=np.float32) < keep) / np.float32(keep)
        out = self.session.run(self.outputs, {FEATURES: tiled, MASK: mask.astype(np.float32)})
        probs = np.concatenate(out, axis=1).reshape(self.samples, n, -1)
        return probs.mean(axis=0), probs.std(axis=0)


@dataclass(frozen=True)
class PhotoScores:
    """One photo's scores: probabilities (all tasks side by side, task order) and the extras."""

    probs: np.ndarray
    mc_mean: np.ndarray | None = None  # MC dropout: the sampled probabilities' mean
    mc_std: np.ndarray | None = None  # and their standard deviation
    distance: float | None = None  # embedding distance to the reference's training photos
    maps: np.ndarray | None = None  # asked to explain: every class's activation map (K, h, w)


@dataclass(frozen=True)
class Scores:
    """A batch's scores, one row per photo; ``scores[i]`` (or iteration) gives a photo's own."""

    probs: np.ndarray  # (n, classes of all tasks)
    mc_mean: np.ndarray | None = None  # (n, classes), with MC dropout
    mc_std: np.ndarray | None = None
    distance: np.ndarray | None = None  # (n,), with an embedding reference
    maps: np.ndarray | None = None  # (n, classes, h, w), asked to explain

    def __len__(self) -> int:
        return len(self.probs)

    def __getitem__(self, i: int) -> PhotoScores:
        return PhotoScores(
            self.probs[i],
            None if self.mc_mean is None else self.mc_mean[i],
            None if self.mc_std is None else self.mc_std[i],
            None if self.distance is None else float(self.distance[i]),
            None if self.maps is None else self.maps[i],
        )

    def __iter__(self) -> Iterator[PhotoScores]:
        return (self[i] for i in range(len(self)))


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve: an open, warmed-up session and what model.json says.

    ``tasks`` holds one entry for a single-task model (``classes`` and ``decision`` are then
    its), one per head for a multi-task model (``multitask``; ``classes`` is empty and
    ``decision`` unused).
    """

    ref: ModelRef
    version: str | None
    classes: list[str]
    spec: PreprocessSpec
    decision: dict[str, Any]
    session: Any
    providers: list[str]
    folder: Path
    meta: dict[str, Any]
    tasks: list[ServedTask] = field(default_factory=list)
    multitask: bool = False
    mc: McSampler | None = None  # MC_SAMPLES > 0: dropout sampled per image
    drift: DriftWindow | None = None  # the version has drift.json: served photos scored on it
    embedding: EmbeddingRef | None = None  # and the graph its features: rows end with a distance
    precision: str = "fp32"  # which graph of the version answers (MODEL_PRECISION)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (the first one onnxruntime kept)."""
        return self.providers[0]

    @property
    def outputs(self) -> list[str]:
        """The graph outputs a prediction reads."""
        return [t.output for t in self.tasks] if self.tasks else [OUTPUTS[1]]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a float32 NCHW batch; several tasks: side by side, task order."""
        out = self.session.run(self.outputs, {INPUT: batch})
        if len(out) == 1:
            first: np.ndarray = out[0]
            return first
        return np.concatenate(out, axis=1)

    @property
    def unexplained(self) -> str | None:
        """Why this version cannot explain its answers (None: it can, with its ``cam`` output)."""
        explain = self.meta.get("explain") or {}
        if explain.get("output") == CAM:
            return None
        why = explain.get("unavailable") or "it was exported before explanations existed"
        name = self.meta.get("name", "the model")
        return (
            f"version {self.version or self.ref.uri} ({name}) has no class activation maps: {why}"
        )

    def infer(self, batch: np.ndarray, explain: bool = False) -> Scores:
        """What :func:`carinspect.serving.inference.answer` reads, for a float32 NCHW batch.

        The probabilities; with MC dropout also the sampled mean and spread; with an embedding
        reference also each photo's embedding distance (the graph's features, run once); with
        ``explain`` (a model that has them) every class's activation map.
        """
        extra = [FEATURES] if self.mc is not None or self.embedding is not None else []
        extra += [CAM] if explain and self.unexplained is None else []
        if not extra:
            return Scores(self.probabilities(batch))
        found = self.session.run([*self.outputs, *extra], {INPUT: batch})
        n = len(self.outputs)
        probs, rest = found[:n], dict(zip(extra, found[n:], strict=True))
        joined = probs[0] if len(probs) == 1 else np.concatenate(probs, axis=1)
        mean = std = distance = None
        if self.mc is not None:
            mean, std = self.mc.summary(rest[FEATURES])
        if self.embedding is not None:
            distance = self.embedding.distances(rest[FEATURES])
        return Scores(joined, mean, std, distance, rest.get(CAM))

    def drift_of(self, scores: PhotoScores) -> dict[str, float]:
        """The drift statistics in a photo's scores (the embedding distance, if any)."""
        return {EMBEDDING: scores.distance} if scores.distance is not None else {}
