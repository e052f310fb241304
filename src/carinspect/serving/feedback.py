"""Served photos kept for review: FEEDBACK_DIR (a folder or ``s3://bucket/prefix``), opt-in.

The photos worth a reviewer's look are kept (:mod:`carinspect.serving.selection`: uncertain,
close calls, MC spread, drift outliers, shadow disagreements, and a random FEEDBACK_PERCENT share),
within per-hour budgets, each under its content hash::

    <FEEDBACK_DIR>/<sha256[:2]>/<sha256>.<ext>    the upload's bytes, as sent
    <FEEDBACK_DIR>/<sha256[:2]>/<sha256>.json     what was answered, when, and why it was kept

The photo is written before its record, each one atomically (a temporary name renamed into
place; an S3 object appears whole), so a record never names a photo that is not there. The
response never waits: the event loop only hands the bytes to a bounded queue that one writer
thread empties; when it is full, the photo is not kept (``carinspect_feedback_skipped_total``).
``FEEDBACK_MAX_MB`` caps the log: when it is reached, sampling stops with one WARNING. A folder
that cannot be written (or a bucket that refuses the first write) turns sampling off with one
WARNING, and serving goes on.

``carinspect feedback import`` turns a reviewer's labels for these photos into a dataset
revision (:mod:`carinspect.data.intake.feedback`); ``carinspect drift`` scores the log as a set.
"""

from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from carinspect.contracts.feedback import AnsweredBy, FeedbackRecord, KeptBecause, record_name
from carinspect.data.decoding.fingerprint import sha256_bytes
from carinspect.data.decoding.integrity import extension
from carinspect.serving.inference import Answer
from carinspect.serving.metrics import ServingMetrics
from carinspect.serving.observers import AnsweredPhoto
from carinspect.serving.selection import Budget, Policy
from carinspect.serving.settings import ServeSettings

logger = logging.getLogger(__name__)

_QUEUE = 64  # photos waiting for the writer, at most; more are not kept


class _Sink(Protocol):
    def put(self, name: str, data: bytes) -> None: ...
    def used(self) -> int: ...
    def exists(self, name: str) -> bool: ...


class _FolderSink:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()


class _S3Sink:
    """The log under an s3:// prefix, through the one S3 layer (data/objects.py)."""

    def __init__(self, uri: str) -> None:
        from carinspect.data.storage.objects import S3Prefix

        self.prefix = S3Prefix(uri)  # boto3 missing (an install without it): ObjectError

    def put(self, name: str, data: bytes) -> None:
        self.prefix.put_bytes(name, data)

    def used(self) -> int:
        return sum(self.prefix.sizes().values())

    def exists(self, name: str) -> bool:
        return self.prefix.exists(name)


class FeedbackLog:
    """The sampler, its queue and its writer thread (:meth:`start` opens the target)."""

    def __init__(self, settings: ServeSettings, metrics: ServingMetrics) -> None:
        self.target = settings.feedback_dir
        self.policy = Policy(settings)
        self.budget = Budget(settings.feedback_per_hour, settings.feedback_per_class_per_hour)
        self.max_bytes = int(settings.feedback_max_mb * 1024 * 1024)
        self.metrics = metrics
        self.enabled = False
        self.reason = "not started"
        self._sink: _Sink | None = None
        self._used = 0
        self._queue: queue.Queue[tuple[bytes, dict[str, Any]] | None] = queue.Queue(_QUEUE)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the target and probe it with a write; a failure disables sampling (WARNING)."""
        try:
            sink: _Sink = (
                _S3Sink(self.target)
                if self.target.startswith("s3://")
                else _FolderSink(Path(self.target))
            )
            sink.put(".carinspect-feedback", b"photos kept by carinspect serve (FEEDBACK_DIR)\n")
            self._used = sink.used()
        except Exception as err:  # any trouble with the target is a reason not to sample
            self._disable(f"FEEDBACK_DIR={self.target} cannot be written ({err})")
            return
        self._sink, self.enabled, self.reason = sink, True, ""
        self._thread = threading.Thread(target=self._write_all, name="feedback", daemon=True)
        self._thread.start()
        logger.info(
            "keeping answered photos worth a look and %g%% at random in %s (%.1f of %.0f MB used)",
            self.policy.percent, self.target, self._used / 2**20, self.max_bytes / 2**20,
        )  # fmt: skip

    def _disable(self, reason: str) -> None:
        if self.enabled or self.reason == "not started":
            logger.warning("feedback sampling is off: %s; serving goes on", reason)
        self.enabled, self.reason = False, reason

    def observe(self, photo: AnsweredPhoto) -> None:
        """An answered photo: kept if the policy finds it worth a look (an ``Observer``)."""
        if self.enabled:
            self.keep(photo, self.policy.reasons(photo.model, photo.scores, photo.answer))

    def disagreed(self, photo: AnsweredPhoto, theirs: Answer) -> None:
        """The shadow answered ``photo`` otherwise (told by :class:`SecondOpinion`, later)."""
        if self.enabled:
            self.keep(photo, self.policy.disagreement(photo.answer, theirs))

    def keep(self, photo: AnsweredPhoto, reasons: list[KeptBecause]) -> None:
        """Queue ``photo`` for the writer when there is a reason and the budgets allow it.

        Called on the event loop: never blocks.
        """
        if not reasons:
            return
        spent = self.budget.take(photo.answer.labels)
        if spent is not None:
            self.metrics.feedback_skipped.labels(f"budget_{spent}").inc()
            return
        model = photo.model
        record = {
            "received_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "filename": photo.filename,
            "model": AnsweredBy(name=model.ref.name, version=model.version, alias=model.ref.alias),
            "labels": photo.answer.labels,
            "classes": {t.name: t.classes for t in model.tasks},
            "answer": photo.answer.body,
            "reasons": reasons,
            "score": max(r.score for r in reasons),
        }
        data = photo.data
        try:
            self._queue.put_nowait((data, record))
        except queue.Full:
            self.metrics.feedback_skipped.labels("busy").inc()

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._write(*item)
            except Exception as err:  # the writer must outlive any one photo
                self.metrics.feedback_skipped.labels("error").inc()
                self._disable(f"writing to {self.target} failed ({err})")

    def _write(self, data: bytes, record: dict[str, Any]) -> None:
        if not self.enabled or self._sink is None:
            return
        sha = sha256_bytes(data)
        name = record_name(sha)
        if self._sink.exists(name):
            self.metrics.feedback_skipped.labels("duplicate").inc()
            return
        kept = FeedbackRecord(sha256=sha, bytes=len(data), **record)
        body = kept.model_dump_json(indent=1).encode()
        if self._used + len(data) + len(body) > self.max_bytes:
            self.metrics.feedback_skipped.labels("full").inc()
            self._disable(f"FEEDBACK_MAX_MB={self.max_bytes / 2**20:g} reached in {self.target}")
            return
        photo = f"{sha[:2]}/{sha}{extension(data)}"
        self._sink.put(photo, data)  # the photo first: a record always has its photo
        self._sink.put(name, body)
        self._used += len(data) + len(body)
        self.metrics.feedback_saved.inc()
        self.metrics.feedback_kept.labels(kept.reasons[0].kind if kept.reasons else "random").inc()

    def stop(self) -> None:
        """Write what is queued, then stop the writer."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
