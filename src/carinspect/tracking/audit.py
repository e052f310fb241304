"""The audit trail of an alias: every move of ``champion``, whoever made it.

Entries live on the registered model itself, one tag per move (``audit.<alias>.<UTC time>-<id>``
holding JSON), so the trail travels with the registry, shows in the MLflow UI, and needs no
store of its own. A move made outside carinspect (the MLflow UI, or any API client) leaves no
entry; :func:`reconcile` notices that the alias no longer points where the last entry says and
records the move then (``action: "external"``, ``by: "unknown"``, ``at`` = when it was noticed).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

logger = logging.getLogger(__name__)

Action = Literal["promote", "force", "rollback", "external"]
_PREFIX = "audit."


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: from one version (or none) to another (or none)."""

    alias: str
    from_version: str | None
    to_version: str | None
    action: Action
    by: str
    reason: str
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    gate: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for people: when, what, who, why."""
        old = self.from_version or "-"
        new = self.to_version or "-"
        return f"{self.at}  {self.alias}: {old} -> {new}  {self.action} by {self.by}: {self.reason}"


def actor(configured: str | None = None) -> str:
    """Who is acting: CARINSPECT_USER when set, else the MLflow user name, else user@host."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return os.environ["MLFLOW_TRACKING_USERNAME"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (arbitrary uid in a container)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _version(v: object) -> str | None:
    """Versions are int from the SQL store and str over REST: compare them as text."""
    return None if v is None else str(v)


def alias_target(client: Any, name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None."""
    aliases = client.get_registered_model(name).aliases or {}
    return _version(aliases.get(alias))


def read_trail(client: Any, name: str, alias: str) -> list[AliasMove]:
    """Every recorded move of ``alias``, oldest first.

    Two observers noticing the same outside move at once both record it; the copies are
    dropped here (same from/to, both external, adjacent).
    """
    moves: list[AliasMove] = []
    for key, raw in entries(client, name, alias):
        try:
            move = AliasMove(**raw)
        except TypeError as err:
            logger.warning("ignoring unreadable audit entry %s on %s: %s", key, name, err)
            continue
        last = moves[-1] if moves else None
        if (
            last is not None
            and move.action == last.action == "external"
            and (move.from_version, move.to_version) == (last.from_version, last.to_version)
        ):
            continue
        moves.append(move)
    return moves


def record(client: Any, name: str, move: AliasMove) -> None:
    """Append ``move`` to the trail of ``name``."""
    append(client, name, move.alias, asdict(move))
    logger.debug("audit %s: %s", name, move.describe())


def append(client: Any, name: str, scope: str, entry: dict[str, Any]) -> None:
    """One entry of the trail ``scope`` (an alias, or ``rollout``) on registered model ``name``.

    Keys sort in time order: ``audit.<scope>.<UTC time>-<random>``.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    key = f"{_PREFIX}{scope}.{stamp}-{uuid.uuid4().hex[:6]}"
    client.set_registered_model_tag(name, key, json.dumps(entry, sort_keys=True))


def entries(client: Any, name: str, scope: str) -> list[tuple[str, dict[str, Any]]]:
    """(key, entry) of every readable entry of the trail ``scope``, oldest first."""
    tags = client.get_registered_model(name).tags or {}
    prefix = f"{_PREFIX}{scope}."
    found = []
    for key in sorted(k for k in tags if k.startswith(prefix)):
        try:
            entry = json.loads(tags[key])
        except ValueError as err:
            logger.warning("ignoring unreadable audit entry %s on %s: %s", key, name, err)
            continue
        found.append((key, entry))
    return found


def reconcile(client: Any, name: str, alias: str, observer: str) -> AliasMove | None:
    """Record a move of ``alias`` made outside carinspect, if there was one since the last entry."""
    current = alias_target(client, name, alias)
    trail = read_trail(client, name, alias)
    recorded = trail[-1].to_version if trail else None
    if current == recorded:
        return None
    move = AliasMove(
        alias=alias,
        from_version=recorded,
        to_version=current,
        action="external",
        by="unknown",
        reason=f"moved outside carinspect (MLflow UI or API); noticed by {observer}",
    )
    record(client, name, move)
    return move


def champion_history(trail: list[AliasMove]) -> list[str | None]:
    """The stack of champions the trail implies: each move pushes, each rollback pops."""
    stack: list[str | None] = []
    for move in trail:
        if not stack and move.from_version is not None:
            stack.append(move.from_version)
        if move.action == "rollback" and len(stack) >= 2 and stack[-2] == move.to_version:
            stack.pop()
        else:
            stack.append(move.to_version)
    return stack
