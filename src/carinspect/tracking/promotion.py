"""Promotion: the gate a version passes before alias ``champion`` moves to it, and rollback.

The gate compares the candidate's recorded metric (the ``metrics.<split>.<metric>`` tag that
register sets) with the current champion's, minus a tolerance, and with an absolute floor, and
checks that the version's files are what serving needs (model.onnx, and a model.json with classes,
preprocessing and decision thresholds). ``force`` overrides a failed gate but needs a reason;
both outcomes land in the audit trail with the gate's figures.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carinspect.config import PromoteConfig
from carinspect.contracts.base import ContractError
from carinspect.contracts.cards import read_card
from carinspect.contracts.folders import ExportDir
from carinspect.errors import InputError
from carinspect.tracking.audit import (
    Action,
    AliasMove,
    alias_target,
    champion_history,
    read_trail,
    reconcile,
    record,
)

logger = logging.getLogger(__name__)


class PromotionError(InputError):
    """The requested move cannot be made (no such version, nothing to roll back to, ...)."""


class GateRefused(PromotionError):
    """The candidate did not pass the gate; the message carries the figures."""


@dataclass(frozen=True)
class Gate:
    """The gate's verdict and the figures it was based on."""

    passed: bool
    failures: list[str]
    figures: dict[str, Any]


def client_for(tracking_uri: str) -> Any:
    """An MlflowClient on ``tracking_uri`` (the import is slow: done only when needed)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def _version_or_fail(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException as err:
        raise PromotionError(f"model {name!r} has no version {version!r}: {err.message}") from err


def _tag_metric(mv: Any, key: str) -> float | None:
    raw = (mv.tags or {}).get(key)
    try:
        return None if raw is None else float(raw)
    except ValueError:
        return None


def _serving_files(client: Any, name: str, version: str) -> list[str]:
    """What is missing from the version for serving (empty when nothing is)."""
    import mlflow

    uri = f"models:/{name}/{version}"
    problems: list[str] = []
    listed = {a.path for a in mlflow.artifacts.list_artifacts(artifact_uri=uri)}
    if ExportDir.ONNX not in listed:
        problems.append(f"{ExportDir.ONNX} is missing")
    folder = ExportDir.LOGGED_CARD.split("/")[0]
    if folder not in listed:
        return [*problems, f"{ExportDir.LOGGED_CARD} is missing"]
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{uri}/{ExportDir.LOGGED_CARD}", dst_path=tmp
        )
        try:
            read_card(Path(path))
        except ContractError as err:  # the same rules as export and the server
            problems.append(f"{ExportDir.CARD} {str(err).removeprefix(path).strip()}")
    return problems


def _class_sets(mv: Any) -> dict[str, str]:
    """What a version answers: ``classes`` (one task) or ``tasks`` and each ``classes.<task>``."""
    tags = mv.tags or {}
    return {k: v for k, v in tags.items() if k in ("classes", "tasks") or k.startswith("classes.")}


def _describe_classes(sets: dict[str, str]) -> str:
    if "tasks" in sets:
        return "; ".join(f"{t}: {sets.get(f'classes.{t}', '?')}" for t in sets["tasks"].split(","))
    return sets.get("classes", "unknown classes")


Judge = Callable[[str, "str | None"], dict[str, Any]]


def evaluate_gate(
    client: Any, name: str, version: str, cfg: PromoteConfig, judged: dict[str, Any] | None = None
) -> Gate:
    """Judge ``version`` of ``name`` against the current champion and the floor.

    ``judged``: both versions' figures on one identical photo set (:mod:`carinspect.serving.judge`):
    then those are compared, not the recorded tags, and they land in the audit trail.
    """
    key = f"metrics.{cfg.split}.{cfg.metric}"
    candidate = _version_or_fail(client, name, version)
    score = _tag_metric(candidate, key)
    champion = alias_target(client, name, cfg.alias)
    champ_score = None
    failures: list[str] = []
    comparable = True
    if champion is not None and champion != version:
        current = _version_or_fail(client, name, champion)
        champ_score = _tag_metric(current, key)
        if judged is not None:
            champ_score = (judged.get("champion") or {}).get("value")
        mine, theirs = _class_sets(candidate), _class_sets(current)
        if mine and theirs and mine != theirs:
            comparable = False
            # a score on other classes is not comparable, and clients of the alias would get
            # answers they do not know
            failures.append(
                f"version {version} answers {_describe_classes(mine)} but champion version "
                f"{champion} answers {_describe_classes(theirs)}: different classes (retire "
                f"the alias first, or register under another model name)"
            )
    if judged is not None:
        score = judged["candidate"]["value"]
        key = f"same photos ({judged['photos']}: {judged['digest'][:19]}) {cfg.metric}"
    required = cfg.floor if champ_score is None else max(cfg.floor, champ_score - cfg.tolerance)
    figures: dict[str, Any] = {
        "metric": key,
        "candidate": score,
        "champion_version": champion,
        "champion": champ_score,
        "tolerance": cfg.tolerance,
        "floor": cfg.floor,
        "required": round(required, 6),
    }
    if judged is not None:
        figures["same_photos"] = judged
    label = f"{cfg.split} {cfg.metric}" if judged is None else f"same-photos {cfg.metric}"
    if score is None:
        failures.append(f"version {version} has no {key} tag (was it registered by carinspect?)")
    else:
        if score < cfg.floor:
            failures.append(f"{label} {score:.4f} < floor {cfg.floor:.4f}")
        if comparable and champ_score is not None and score < champ_score - cfg.tolerance:
            failures.append(
                f"{label} {score:.4f} < {champ_score - cfg.tolerance:.4f} (champion version "
                f"{champion} has {champ_score:.4f}, tolerance {cfg.tolerance:.4f})"
            )
    missing = _serving_files(client, name, version)
    figures["serving_files"] = "ok" if not missing else "; ".join(missing)
    failures.extend(missing)
    return Gate(passed=not failures, failures=failures, figures=figures)


def promote(
    client: Any,
    name: str,
    cfg: PromoteConfig,
    version: str | None,
    by: str,
    *,
    candidate_alias: str = "challenger",
    force: bool = False,
    reason: str | None = None,
    judge: Judge | None = None,
) -> AliasMove | None:
    """Move ``cfg.alias`` to ``version`` (default: the ``candidate_alias`` version) after the gate.

    ``judge(version, champion)`` scores both on one identical photo set (its figures decide the
    gate); without it, the recorded metrics do. Returns the recorded move, or None when the
    version already holds the alias.
    """
    if force and not (reason and reason.strip()):
        raise PromotionError("--force needs --reason: say why the gate is overridden")
    reconcile(client, name, cfg.alias, observer="carinspect promote")
    if version is None:
        version = alias_target(client, name, candidate_alias)
        if version is None:
            raise PromotionError(
                f"model {name!r} has no version with alias {candidate_alias!r}: "
                "register one, or name it with --version"
            )
    version = str(version)
    current = alias_target(client, name, cfg.alias)
    if current == version:
        logger.info("%s version %s already has alias %s", name, version, cfg.alias)
        return None
    judged = judge(version, current if current != version else None) if judge else None
    gate = evaluate_gate(client, name, version, cfg, judged)
    failed = "; ".join(gate.failures)
    if not gate.passed and not force:
        raise GateRefused(f"gate refused {name} version {version} for alias {cfg.alias}: {failed}")
    action: Action = "promote" if gate.passed else "force"
    why = (reason or "gate passed") if gate.passed else f"{reason} (gate failed: {failed})"
    client.set_registered_model_alias(name, cfg.alias, version)
    move = AliasMove(cfg.alias, current, version, action, by, why, gate=gate.figures)
    record(client, name, move)
    return move


def rollback(client: Any, name: str, alias: str, by: str, reason: str | None = None) -> AliasMove:
    """Move ``alias`` back to the champion before the current one, as the audit trail has it."""
    reconcile(client, name, alias, observer="carinspect rollback")
    history = champion_history(read_trail(client, name, alias))
    current = alias_target(client, name, alias)
    if len(history) < 2 or history[-2] is None:
        raise PromotionError(
            f"the audit trail of {name!r} has no earlier {alias} to roll back to "
            f"(current: {current or 'none'})"
        )
    target = str(history[-2])
    _version_or_fail(client, name, target)
    client.set_registered_model_alias(name, alias, target)
    move = AliasMove(alias, current, target, "rollback", by, reason or f"rollback from {current}")
    record(client, name, move)
    return move
