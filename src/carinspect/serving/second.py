"""A second alias beside the champion: shadow traffic or a canary share.

- **Shadow** (``SHADOW=challenger``): every request is answered by MODEL_URI's model as usual;
  after the answer is ready, the same photo (or a ``SHADOW_PERCENT`` share of them) also goes to
  the shadow alias's model, off the response path, and the two labels are counted per task and class
  (``carinspect_shadow_agreement_total``); a disagreement is logged with both answers.
- **Canary**: a deterministic share of clients is answered by the ``CANARY_ALIAS`` model
  instead. The share is a hash of the request's client key (``X-Client-Key``, else
  ``X-Request-Id``, else the client's address), so one client stays on one side, and a client on
  the canary at 5% stays on it at 25%; the answer's ``model`` says which version answered. The
  share is the rollout's recorded on the alias's version in the registry (`carinspect rollout`,
  :mod:`carinspect.contracts.rollout`), read at each poll (``ROLLOUT_FOLLOW``); while none is
  recorded, ``CANARY_PERCENT``. The canary model is loaded only while its share is above 0.

The second model has a :class:`ModelStore` of its own: it follows its alias as the champion's
does (hot reload, the old version kept when a new one fails, a missing alias awaited quietly).
Until it is loaded, every request is answered by the champion alone. With neither setting, none
of this exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable
from typing import Any

from carinspect.contracts.base import ContractError
from carinspect.contracts.rollout import Rollout
from carinspect.serving.inference import Answer, answer
from carinspect.serving.loaded import LoadedModel, ModelLoadError, ModelRef
from carinspect.serving.metrics import ServingMetrics
from carinspect.serving.model_store import ModelStore
from carinspect.serving.observers import AnsweredPhoto
from carinspect.serving.settings import ServeSettings
from carinspect.tracking.rollout import of_version

logger = logging.getLogger(__name__)

CLIENT_HEADERS = ("x-client-key", "x-request-id")
_BUCKETS = 10_000  # the canary share's resolution: 0.01%


def client_bucket(key: str) -> int:
    """The client's place in [0, 10000): the same key always lands in the same place."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % _BUCKETS


class SecondOpinion:
    """The shadow or canary model, its store, and what it does with requests."""

    def __init__(self, settings: ServeSettings, metrics: ServingMetrics) -> None:
        ref = ModelRef.parse(settings.model_uri)
        if ref.name is None:
            raise ModelLoadError(
                f"SHADOW/CANARY_PERCENT need MODEL_URI to name a registered model "
                f"(models:/<name>@<alias>); {settings.model_uri!r} is a folder"
            )
        self.mode = "shadow" if settings.shadow else "canary"
        self.alias = settings.shadow or settings.canary_alias
        if self.alias == ref.alias:
            raise ModelLoadError(
                f"{'SHADOW' if settings.shadow else 'CANARY_ALIAS'}={self.alias!r} is the alias "
                f"MODEL_URI already serves ({settings.model_uri})"
            )
        self.fallback = settings.canary_percent if self.mode == "canary" else 0.0
        self.follow = self.mode == "canary" and settings.rollout_follow
        self.rollout: Rollout | None = None  # the rollout recorded on the alias's version
        self.metrics = metrics
        self._set_percent(self.fallback)
        own = settings.model_copy(
            update={"model_uri": f"models:/{ref.name}@{self.alias}", "audit_on_poll": False}
        )
        self.store = ModelStore(
            own, on_reload=self._reloaded, wanted=self._wanted if self.mode == "canary" else None
        )
        self._sample = settings.shadow_percent / 100
        self._sampler = random.Random(0)  # which requests are shadowed: a fixed share, not a key
        self._pending: set[asyncio.Task[None]] = set()
        self._most_pending = 4 * settings.max_batch_size  # beyond: shadow is skipped, not queued
        # told of each photo the shadow answered otherwise (the feedback log keeps it)
        self.on_disagreement: Callable[[AnsweredPhoto, Answer], None] | None = None

    def _set_percent(self, percent: float) -> None:
        self.percent = percent
        self.share = round(percent * _BUCKETS / 100)
        self.metrics.canary_percent.set(percent)

    def _wanted(self, mv: object) -> bool:
        """At each poll: the share from the rollout on the alias's version; load only if > 0."""
        rollout = None
        if self.follow and mv is not None:
            try:
                rollout = of_version(mv)
            except ContractError as err:  # a hand-edited tag: fall back, loudly
                logger.error("%s; CANARY_PERCENT=%g applies", err, self.fallback)
        if rollout is not None and _moved(rollout, self.rollout):
            logger.info("canary share %g%%: %s", rollout.share, rollout.describe())
        self.rollout = rollout
        self._set_percent(self.fallback if rollout is None else rollout.share)
        return self.percent > 0

    def _reloaded(self, model: LoadedModel | None, error: str | None) -> None:
        if model is not None:
            self.metrics.second_model(self.mode, self.alias, model.version)
            if self.mode == "canary":
                self.metrics.side_ready("canary", model.version)
        if error is not None:
            self.metrics.second_reload_failures.labels(self.mode).inc()

    def canary(self, key: str | None) -> LoadedModel | None:
        """The canary model, if this client's share goes to it and it is loaded."""
        model = self.store.current
        if self.mode != "canary" or model is None or key is None:
            return None
        return model if client_bucket(key) < self.share else None

    def observe(self, photo: AnsweredPhoto) -> None:
        """An answered photo: the shadow answers it too (an observer, off the response path)."""
        if photo.rerun is not None:
            self.shadow(photo)

    def shadow(self, photo: AnsweredPhoto) -> None:
        """Answer the same photo with the shadow model later, and count the agreement.

        ``photo.rerun(model)`` preprocesses the photo for that model and runs it through the
        batcher. The client already has its answer; nothing here can delay or change it.
        """
        model = self.store.current
        if self.mode != "shadow" or model is None:
            return
        if self._sample < 1 and self._sampler.random() >= self._sample:
            return
        if len(self._pending) >= self._most_pending:
            self.metrics.shadow_skipped.inc()
            return
        task = asyncio.get_running_loop().create_task(self._compare(photo, model))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _compare(self, photo: AnsweredPhoto, model: LoadedModel) -> None:
        champion, reply, filename = photo.model, photo.answer, photo.filename
        assert photo.rerun is not None
        try:
            theirs = answer(model, await photo.rerun(model))
        except Exception as err:  # the shadow's trouble is never the client's
            self.metrics.shadow_errors.inc()
            logger.warning("shadow %s version %s failed on %s: %s", self.alias, model.version,
                           filename or "upload", err)  # fmt: skip
            return
        ours, other = reply.labels, theirs.labels
        for task, label in ours.items():
            self.metrics.shadow_agreement.labels(task, label, other.get(task, "")).inc()
            disagreed = self.metrics.shadow_disagreements.labels(task)  # 0 until one happens
            if other.get(task) != label:
                disagreed.inc()
        if ours != other:
            logger.info(
                "shadow disagrees on %s: version %s (%s) says %s, %s version %s says %s",
                filename or "upload", champion.version, champion.ref.alias, _brief(reply.body),
                self.alias, model.version, _brief(theirs.body),
            )  # fmt: skip
            if self.on_disagreement is not None:
                self.on_disagreement(photo, theirs)

    async def drain(self) -> None:
        """Let the shadow comparisons in flight finish (at shutdown)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def _moved(now: Rollout, before: Rollout | None) -> bool:
    """Whether the rollout is another, or at another step or status (a hold's reason is not)."""
    key = (now.id, now.step, now.status)
    return before is None or key != (before.id, before.step, before.status)


def _brief(reply: dict[str, Any]) -> str:
    """``dirty (0.91)`` or ``cleanliness=dirty (0.91), damage=intact (0.77)``."""
    if "tasks" in reply:
        return ", ".join(
            f"{name}={a['label']} ({a['confidence']:.2f})" for name, a in reply["tasks"].items()
        )
    return f"{reply['label']} ({reply['confidence']:.2f})"
