"""Which answered photos are worth a reviewer's look, and why: the feedback policy.

A fleet sends far more photos than anyone can label, and a random share spends the reviewers'
day on photos the model already gets right with confidence. Beside the random share
(FEEDBACK_PERCENT), a photo is kept when the answer itself says it is worth a look:

- ``uncertain``: a task answered "uncertain" (inside the decision rule's band);
- ``margin``: the two most probable classes of a task are within FEEDBACK_MARGIN;
- ``mc_spread``: MC dropout's spread of the answered class is above FEEDBACK_MC_STD;
- ``drift``: the photo's embedding distance is beyond FEEDBACK_DRIFT_FACTOR times the 90th
  percentile of held-out photos' distances (drift.json), i.e. unlike anything trained on;
- ``disagreement``: the shadow model answered otherwise (reported later, off the response path).

Each reason carries a score in [0, 1] (higher: more worth a look); a record keeps all its reasons
and their maximum, which orders the review queue. Budgets per clock hour, in all and per answered
class, stop one busy class (or a burst) from filling the log.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from carinspect.contracts.feedback import KeptBecause
from carinspect.drift.profile import EMBEDDING
from carinspect.serving.inference import UNCERTAIN_LABEL, Answer
from carinspect.serving.loaded import LoadedModel, PhotoScores
from carinspect.serving.settings import ServeSettings

RANDOM, UNCERTAIN, MARGIN, MC_SPREAD, DRIFT, DISAGREEMENT = (
    "random", "uncertain", "margin", "mc_spread", "drift", "disagreement"
)  # fmt: skip


@dataclass
class Budget:
    """Photos kept per clock hour: in all, and per (task, answered label); 0 is no cap."""

    per_hour: int
    per_class: int
    clock: Callable[[], float] = time.time
    _hour: int = -1
    _total: int = 0
    _by_class: dict[tuple[str, str], int] = field(default_factory=dict)

    def take(self, labels: dict[str, str]) -> str | None:
        """Count one photo answered ``labels`` if the budgets allow it; else say which is spent."""
        hour = int(self.clock() // 3600)
        if hour != self._hour:
            self._hour, self._total, self._by_class = hour, 0, {}
        if self.per_hour and self._total >= self.per_hour:
            return "hour"
        keys = list(labels.items())
        if self.per_class and any(self._by_class.get(k, 0) >= self.per_class for k in keys):
            return "class"
        self._total += 1
        for k in keys:
            self._by_class[k] = self._by_class.get(k, 0) + 1
        return None


class Policy:
    """The reasons to keep an answered photo (FEEDBACK_* settings)."""

    def __init__(self, settings: ServeSettings, seed: int = 0) -> None:
        self.percent = settings.feedback_percent
        self.margin = settings.feedback_margin
        self.mc_std = settings.feedback_mc_std
        self.drift_factor = settings.feedback_drift_factor
        self.uncertain = settings.feedback_uncertain
        self.disagreements = settings.feedback_disagreements
        self._sampler = random.Random(seed)

    def reasons(self, model: LoadedModel, scores: PhotoScores, reply: Answer) -> list[KeptBecause]:
        """Why this photo is worth a look (empty: it is not), strongest first."""
        found: list[KeptBecause] = []
        for t in model.tasks:
            probs = scores.probs[t.columns]
            answered = reply.labels.get(t.name, "")
            if self.uncertain and answered == UNCERTAIN_LABEL:
                found.append(_because(UNCERTAIN, 1.0 - top_two_gap(probs), t.name))
            gap = top_two_gap(probs)
            if self.margin > 0 and gap < self.margin:
                found.append(_because(MARGIN, 1.0 - gap, t.name))
            if self.mc_std > 0 and scores.mc_std is not None:
                spread = float(scores.mc_std[t.columns][int(np.argmax(probs))])
                if spread > self.mc_std:
                    found.append(_because(MC_SPREAD, min(1.0, 2.0 * spread), t.name))
        far = self._drift(model, scores)
        if far is not None:
            found.append(far)
        if not found and self.percent > 0 and self._sampler.random() * 100 < self.percent:
            found.append(_because(RANDOM, 0.0))
        return sorted(found, key=lambda r: -r.score)

    def disagreement(self, ours: Answer, theirs: Answer) -> list[KeptBecause]:
        """The shadow's other answer as a reason (one per task it differs on)."""
        if not self.disagreements:
            return []
        return [
            _because(DISAGREEMENT, 1.0, task, f"shadow said {theirs.labels.get(task, '')}")
            for task, label in ours.labels.items()
            if theirs.labels.get(task) != label
        ]

    def _drift(self, model: LoadedModel, scores: PhotoScores) -> KeptBecause | None:
        if self.drift_factor <= 0 or scores.distance is None or model.drift is None:
            return None
        binned = model.drift.profile.stats.get(EMBEDDING)
        if binned is None or not binned.edges or binned.edges[-1] <= 0:
            return None
        high = binned.edges[-1]  # the 90th percentile of held-out photos' distances
        if scores.distance <= self.drift_factor * high:
            return None
        detail = f"embedding distance {scores.distance:.3g} > {self.drift_factor:g} x {high:.3g}"
        return _because(DRIFT, 1.0 - high / scores.distance, "", detail)


def top_two_gap(probs: np.ndarray) -> float:
    """The gap between the two most probable classes."""
    top = np.sort(np.asarray(probs, dtype=np.float64))[-2:]
    return float(top[1] - top[0]) if len(top) == 2 else 1.0


def _because(kind: str, score: float, task: str = "", detail: str = "") -> KeptBecause:
    return KeptBecause(
        kind=kind, score=round(min(1.0, max(0.0, score)), 6), task=task, detail=detail
    )
