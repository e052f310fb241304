"""The label audit's suspects as a feedback log, so that `review push` makes them tasks.

A reviewed suspect must correct the photo it doubts, not add a second one: the log holds the
source's own bytes (the manifest's sha256), so after `review pull` the feedback copy and the
source copy are one file and ingest takes the reviewer's label for it
(:func:`carinspect.stages.ingest.run`). Sources that train several tasks together cannot take
feedback photos; their labels are corrected in their manifest.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from carinspect.config import DataConfig
from carinspect.contracts.feedback import AnsweredBy, FeedbackRecord, KeptBecause, record_name
from carinspect.data.decoding.fingerprint import sha256_bytes
from carinspect.data.decoding.integrity import extension
from carinspect.data.intake.sources import open_source
from carinspect.errors import InputError
from carinspect.io import write_bytes_atomic, write_text_atomic
from carinspect.stages.audit import AuditResult, Doubt


def write_review_log(result: AuditResult, data: DataConfig, folder: Path) -> Path:
    """The suspects of ``result`` as a feedback log (photo + record each) in ``folder``.

    The pre-annotation is the suggested label; the record says the given one, so a reviewer
    sees both. The photos are read again from ``data.source`` and must be the bytes that were
    ingested. The folder grows as serving's log does: suspects of an earlier audit stay, so
    their tasks can still be pulled after the audit runs again.
    """
    if len(result.classes) > 1:
        raise InputError(
            f"data.source {data.source!r} trains the tasks {sorted(result.classes)} together, and "
            "reviewed photos come back one label each through data/feedback, which such a source "
            "cannot take: correct the labels of suspects.csv in the source's manifest instead"
        )
    originals = _originals(result.suspects, data)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    folder = Path(folder)
    for doubt in result.suspects:
        photo = originals[doubt.source]
        sha = sha256_bytes(photo)
        detail = f"given {doubt.given}, suggested {doubt.suggested} ({doubt.split})"
        because = KeptBecause(kind="label_issue", score=round(1.0 - doubt.quality, 6),
                              task=doubt.task, detail=detail)  # fmt: skip
        record = FeedbackRecord(
            sha256=sha, bytes=len(photo), received_at=now, filename=doubt.source,
            model=AnsweredBy(name="label audit", version=None, alias=None),
            labels={doubt.task: doubt.suggested},
            classes={doubt.task: result.classes[doubt.task]},
            answer={"label": doubt.suggested, "given": doubt.given,
                    "confidence": round(1.0 - doubt.quality, 6)},
            reasons=[because], score=because.score,
        )  # fmt: skip
        write_bytes_atomic(folder / f"{sha[:2]}/{sha}{extension(photo)}", photo)
        write_text_atomic(folder / record_name(sha), record.model_dump_json(indent=1))
    return folder


def _originals(doubts: list[Doubt], data: DataConfig) -> dict[str, bytes]:
    """The source bytes of each doubted photo, checked against the hash ingest recorded."""
    wanted = {d.source: d.sha256 for d in doubts}
    found: dict[str, bytes] = {}
    with open_source(data.source, data.demo, data.task, data.coco_tasks) as source:
        for item in source.items:
            if item.source in wanted and item.source not in found:
                found[item.source] = item.read()
    for name, sha in wanted.items():
        if name not in found:
            raise InputError(
                f"data.source {data.source!r} no longer holds {name}, which the audit doubted: "
                "run `dvc repro` (ingest and audit) before pushing the suspects"
            )
        if sha256_bytes(found[name]) != sha:
            raise InputError(
                f"data.source {data.source!r}: {name} changed since it was ingested (sha256 "
                f"{sha[:12]}... then): run `dvc repro` (ingest and audit) before pushing"
            )
    return found
