"""One look at a running rollout, and the loop of looks that `carinspect rollout run` is.

A look reads the running rollout from the registry, counts the canary's answers at its step,
and, once there are ``min_requests``, asks the analysis. Then exactly one of:

- **hold**: too few answers yet, a query with no data, or Prometheus unreachable; the share
  stays and the reason is recorded (once per new reason);
- **abort**: a check failed; the share goes back to 0 and the trail records each query, its
  value and its limit;
- **step**: all passed; the next share of the schedule;
- **promote**: all passed at the last step; the version goes through the promotion gate
  (refused: abort, with the gate's figures) and the rollout ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from carinspect.config import RolloutConfig
from carinspect.contracts.rollout import Rollout
from carinspect.delivery.analysis import Prometheus, PrometheusError, analyse
from carinspect.tracking import rollout as state
from carinspect.tracking.promotion import GateRefused

logger = logging.getLogger(__name__)

Verdict = Literal["hold", "abort", "step", "promote", "none"]
# moves the champion alias to the version through the gate; raises GateRefused when it fails
Promoter = Callable[[Rollout], Any]


@dataclass(frozen=True)
class Look:
    """What one look decided, and the rollout as it is after it."""

    verdict: Verdict
    rollout: Rollout | None
    reason: str

    def describe(self) -> str:
        """One line for people."""
        if self.rollout is None:
            return self.reason
        return f"{self.verdict}: {self.reason} [{self.rollout.describe()}]"


def _age_s(stamp: str) -> float:
    return max(0.0, (datetime.now(UTC) - datetime.fromisoformat(stamp)).total_seconds())


def look(client: Any, name: str, cfg: RolloutConfig, prom: Prometheus, by: str,
         promote: Promoter) -> Look:  # fmt: skip
    """One look at ``name``'s running rollout (see the module docstring)."""
    rollout = state.running(client, name)
    if rollout is None:
        return Look("none", None, f"{name} has no rollout in progress")
    age = _age_s(rollout.step_started_at)
    try:
        answered = prom.value(cfg.requests_promql(rollout.version, age)) or 0.0
        if answered < cfg.min_requests:
            why = f"{answered:.0f} of {cfg.min_requests} canary answers at this step"
            return _hold(client, rollout, by, why)
        analysis = analyse(prom, cfg, rollout.version, age)
    except PrometheusError as err:
        return _hold(client, rollout, by, f"no analysis, the share holds: {err}")
    if analysis.failed:
        why = "analysis failed: " + "; ".join(f.describe() for f in analysis.failed)
        return Look("abort", state.abort(client, rollout, by, why, analysis.records()), why)
    if analysis.missing:
        why = "no data yet for " + ", ".join(f.name for f in analysis.missing)
        return _hold(client, rollout, by, why)
    passed = "analysis passed: " + "; ".join(f.describe() for f in analysis.figures)
    if not rollout.last_step:
        nxt = state.advance(client, rollout, by, analysis.records())
        return Look("step", nxt, f"{passed}; share {rollout.share:g}% -> {nxt.share:g}%")
    try:
        promote(rollout)
    except GateRefused as err:
        why = f"the promotion gate refused it after the analysis passed: {err}"
        return Look("abort", state.abort(client, rollout, by, why, analysis.records()), why)
    done = state.finish(client, rollout, by, f"promoted; {passed}", analysis.records())
    return Look("promote", done, passed)


def _hold(client: Any, rollout: Rollout, by: str, why: str) -> Look:
    return Look("hold", state.hold(client, rollout, by, why), why)


def run(
    client: Any,
    name: str,
    cfg: RolloutConfig,
    prom: Prometheus,
    by: str,
    promote: Promoter,
    on_look: Callable[[Look], None] = lambda _: None,
    max_looks: int | None = None,
) -> Look:
    """Look every ``cfg.interval_s`` until the rollout ends (or ``max_looks``); the last look."""
    n = 0
    while True:
        result = look(client, name, cfg, prom, by, promote)
        on_look(result)
        n += 1
        if result.verdict in ("abort", "promote", "none") or (max_looks and n >= max_looks):
            return result
        time.sleep(cfg.interval_s)
