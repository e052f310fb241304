"""What happens to a photo after its answer is ready: observers, off the response path.

The service hands every answered photo to each observer in turn: the drift window counts it,
the feedback log may keep it, the shadow model answers it too. None of them may block or fail
the request; each decides for itself whether the photo concerns it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from carinspect.serving.inference import Answer
from carinspect.serving.loaded import LoadedModel, PhotoScores

# rerun(model): the same photo preprocessed for ``model`` and run through the batcher
Rerun = Callable[[LoadedModel], Coroutine[Any, Any, PhotoScores]]


@dataclass(frozen=True)
class AnsweredPhoto:
    """One upload, the model that answered it, and everything observers may need."""

    data: bytes  # the upload as sent
    filename: str | None
    model: LoadedModel
    scores: PhotoScores  # what the model gave (probabilities, and what drift reads)
    stats: dict[str, float] | None  # drift statistics of the photo, when the model keeps any
    answer: Answer
    rerun: Rerun | None = None  # None where there is no batcher (carinspect predict)


class Observer(Protocol):
    """Something told of every answered photo (called on the event loop: never blocks)."""

    def observe(self, photo: AnsweredPhoto) -> None:
        """Take note of ``photo``."""
        ...


class DriftObserver:
    """Adds the photo to its model's drift window (when the model keeps one)."""

    def observe(self, photo: AnsweredPhoto) -> None:
        """The photo's statistics and answered labels into the window."""
        model = photo.model
        if model.drift is not None and photo.stats is not None:
            model.drift.add({**photo.stats, **model.drift_of(photo.scores)}, photo.answer.labels)
