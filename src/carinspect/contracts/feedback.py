"""The feedback record: what the server writes beside each photo it keeps for review.

``<FEEDBACK_DIR>/<sha256[:2]>/<sha256>.json`` next to the photo. Written by
:mod:`carinspect.serving.feedback`, read by ``carinspect feedback import``
(:mod:`carinspect.data.intake.feedback`), so both go through this one model.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError

from carinspect.contracts.base import Contract, ContractError, explain

SUFFIX = ".json"  # a record's name: the photo's hash, then this


class AnsweredBy(Contract):
    """The registered model version that answered the photo."""

    name: str | None
    version: str | None
    alias: str | None


class KeptBecause(Contract):
    """One reason a photo was kept, and how strongly (0 to 1: higher is more worth a look)."""

    kind: Literal[
        "random", "uncertain", "margin", "mc_spread", "drift", "disagreement", "label_issue"
    ]
    score: float = Field(ge=0.0, le=1.0)
    task: str = ""  # the task it concerns; empty: the photo as a whole
    detail: str = ""


class FeedbackRecord(Contract):
    """One kept photo: its hash and size, when it came, the answer it got and why it was kept."""

    sha256: str
    bytes: int
    received_at: str  # ISO 8601, UTC, seconds
    filename: str | None
    model: AnsweredBy
    labels: dict[str, str]  # task -> the label answered
    classes: dict[str, list[str]]  # task -> the classes the model knows
    answer: dict[str, Any]  # the response body as the client got it
    # why it was kept, strongest first, and the strongest score (the review order); records
    # written before the policy have neither
    reasons: list[KeptBecause] = Field(default_factory=list)
    score: float = Field(0.0, ge=0.0, le=1.0)


def record_name(sha: str) -> str:
    """Where the record of the photo with content hash ``sha`` lives in the log."""
    return f"{sha[:2]}/{sha}{SUFFIX}"


def parse_record(text: bytes | str, where: str) -> FeedbackRecord:
    """A record read back; ``where`` (the log and the file) names it in the error."""
    try:
        return FeedbackRecord.model_validate_json(text)
    except ValidationError as err:
        raise ContractError(f"{where}: not a feedback record: {explain(err)}") from None
