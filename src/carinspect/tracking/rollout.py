"""A rollout's state in the registry: start, step, hold, abort, finish; one at a time per model.

The record (:class:`carinspect.contracts.rollout.Rollout`) is a tag on the version being rolled
out, where serving reads it; every change is also an entry of the registered model's audit
trail (``audit.rollout.*``): what changed, who did it, why, and the analysis behind it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from carinspect.config.rollout import check_schedule
from carinspect.contracts.base import ContractError
from carinspect.contracts.rollout import TAG, Rollout, parse_rollout
from carinspect.errors import InputError
from carinspect.tracking.audit import alias_target, append, entries

logger = logging.getLogger(__name__)

SCOPE = "rollout"  # the audit trail's scope for rollout entries
Event = Literal["start", "step", "hold", "abort", "promote"]


class RolloutError(InputError):
    """A rollout that cannot start or change as asked; the message says why."""


@dataclass(frozen=True)
class RolloutEntry:
    """One change of a rollout, as the audit trail keeps it."""

    rollout: str
    version: str
    event: Event
    share_from: float
    share_to: float
    by: str
    reason: str
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    analysis: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        """One line for people."""
        return (
            f"{self.at}  rollout {self.rollout} v{self.version}: {self.event} "
            f"{self.share_from:g}% -> {self.share_to:g}% by {self.by}: {self.reason}"
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read(client: Any, name: str, version: str) -> Rollout | None:
    """The rollout recorded on ``name`` version ``version``, if any."""
    tags = client.get_model_version(name, version).tags or {}
    return parse_rollout(tags[TAG], f"{name} version {version}") if TAG in tags else None


def of_version(mv: Any) -> Rollout | None:
    """The rollout on an already fetched model version (serving's poll has it in hand)."""
    text = (mv.tags or {}).get(TAG)
    return None if text is None else parse_rollout(text, f"{mv.name} version {mv.version}")


def recorded(client: Any, name: str) -> list[Rollout]:
    """Every rollout recorded on a version of ``name``, newest start first (unreadable: skipped)."""
    found = []
    for mv in client.search_model_versions(f"name='{name}'"):
        try:
            rollout = of_version(mv)
        except ContractError as err:
            logger.warning("%s", err)
            continue
        if rollout is not None:
            found.append(rollout)
    return sorted(found, key=lambda r: r.started_at, reverse=True)


def running(client: Any, name: str) -> Rollout | None:
    """The rollout of ``name`` in progress, if one is."""
    return next((r for r in recorded(client, name) if r.status == "running"), None)


def history(client: Any, name: str, rollout_id: str | None = None) -> list[RolloutEntry]:
    """The audit trail's rollout entries of ``name`` (of one rollout when ``rollout_id``)."""
    found = []
    for key, raw in entries(client, name, SCOPE):
        try:
            entry = RolloutEntry(**raw)
        except TypeError as err:
            logger.warning("ignoring unreadable audit entry %s on %s: %s", key, name, err)
            continue
        if rollout_id is None or entry.rollout == rollout_id:
            found.append(entry)
    return found


def start(
    client: Any,
    name: str,
    alias: str,
    schedule: list[float],
    by: str,
    champion_alias: str = "champion",
    reason: str = "",
) -> Rollout:
    """Record a rollout of ``alias``'s version at the schedule's first share.

    Refused: a schedule that does not rise within (0, 100], an alias with no version, the
    champion's own version, and a second rollout while one runs on ``name`` (naming it).
    """
    try:
        check_schedule(schedule)
    except ValueError as err:
        raise RolloutError(f"rollout of {name}@{alias}: {err}") from None
    first = running(client, name)
    if first is not None:
        raise RolloutError(
            f"{name} already has a rollout in progress: {first.describe()}; finish it or "
            f"`carinspect rollout abort --model {name}` first"
        )
    version = alias_target(client, name, alias)
    if version is None:
        raise RolloutError(f"model {name!r} has no version with alias {alias!r} to roll out")
    champion = alias_target(client, name, champion_alias)
    if champion == version:
        raise RolloutError(
            f"{name} version {version} (@{alias}) is already the {champion_alias}: nothing to roll out"
        )
    now = _now()
    rollout = Rollout(
        id=uuid.uuid4().hex[:8], model=name, alias=alias, version=version, champion=champion,
        schedule=schedule, step=0, status="running", started_at=now, started_by=by,
        step_started_at=now, updated_at=now, reason=reason,
    )  # fmt: skip
    _save(client, rollout, "start", 0.0, by, reason or "started")
    return rollout


def advance(client: Any, rollout: Rollout, by: str, analysis: list[dict[str, Any]]) -> Rollout:
    """The next step's share (the analysis of this step passed)."""
    if rollout.last_step:
        raise RolloutError(f"{rollout.describe()}: already at its last step")
    now = _now()
    nxt = rollout.model_copy(
        update={"step": rollout.step + 1, "step_started_at": now, "updated_at": now, "reason": ""}
    )
    _save(client, nxt, "step", rollout.share, by, "analysis passed", analysis, before=rollout)
    return nxt


def hold(client: Any, rollout: Rollout, by: str, reason: str) -> Rollout:
    """The share stays; why is recorded (not enough requests yet, Prometheus unreachable).

    Written once per new reason, not once per look: every write is a webhook to each replica.
    """
    if reason == rollout.reason:
        return rollout
    same = rollout.model_copy(update={"updated_at": _now(), "reason": reason})
    client.set_model_version_tag(rollout.model, rollout.version, TAG, same.model_dump_json())
    entry = RolloutEntry(rollout.id, rollout.version, "hold", rollout.share, rollout.share,
                         by, reason)  # fmt: skip
    append(client, rollout.model, SCOPE, asdict(entry))
    return same


def abort(
    client: Any,
    rollout: Rollout,
    by: str,
    reason: str,
    analysis: list[dict[str, Any]] | None = None,
) -> Rollout:
    """Share back to 0 and the rollout ended, with why (and the failed analysis)."""
    if rollout.status != "running":
        raise RolloutError(f"{rollout.describe()}: not running, nothing to abort")
    ended = rollout.model_copy(update={"status": "aborted", "updated_at": _now(), "reason": reason})
    _save(client, ended, "abort", rollout.share, by, reason, analysis or [], before=rollout)
    return ended


def finish(
    client: Any, rollout: Rollout, by: str, reason: str, analysis: list[dict[str, Any]]
) -> Rollout:
    """The rollout ended with its version promoted (the champion alias moved by the caller)."""
    ended = rollout.model_copy(
        update={"status": "promoted", "updated_at": _now(), "reason": reason}
    )
    _save(client, ended, "promote", rollout.share, by, reason, analysis, before=rollout)
    return ended


def _save(
    client: Any,
    rollout: Rollout,
    event: Event,
    share_from: float,
    by: str,
    reason: str,
    analysis: list[dict[str, Any]] | None = None,
    before: Rollout | None = None,
) -> None:
    """Write the record where serving reads it, then the trail entry."""
    if before is not None:
        current = read(client, rollout.model, rollout.version)
        if (
            current is None
            or current.id != before.id
            or current.step != before.step
            or (current.status != before.status)
        ):
            raise RolloutError(
                f"rollout {before.id} of {rollout.model} changed meanwhile (now: "
                f"{current.describe() if current else 'gone'}); nothing written"
            )
    client.set_model_version_tag(rollout.model, rollout.version, TAG, rollout.model_dump_json())
    entry = RolloutEntry(rollout.id, rollout.version, event, share_from, rollout.share, by,
                         reason, analysis=analysis or [])  # fmt: skip
    append(client, rollout.model, SCOPE, asdict(entry))
    logger.info("%s: %s", rollout.model, entry.describe())
