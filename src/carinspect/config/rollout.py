"""The rollout section: `carinspect rollout`, a canary stepped through a schedule by analysis."""

from __future__ import annotations

import itertools
from string import Template

from pydantic import Field, field_validator, model_validator

from carinspect.config.base import Section

# In a query: $version (the version rolled out) and $step (the time since the current step
# began, e.g. 300s, so a figure covers this step's share only).
PLACEHOLDERS = ("version", "step")
_ERRORS = (
    '(sum(increase(carinspect_answers_total{{side="{side}",outcome="error"{v}}}[$step])) '
    "or vector(0)) / "
    'sum(increase(carinspect_answers_total{{side="{side}"{v}}}[$step]))'
)
_P99 = (
    "histogram_quantile(0.99, sum by (le) "
    '(increase(carinspect_answer_seconds_bucket{{side="{side}"}}[$step])))'
)
_SHARES = (
    'sum by (task, class) (increase(carinspect_answered_class_total{{side="{side}"}}[$step])) '
    '/ ignoring (class) group_left sum by (task) (increase(carinspect_answered_class_total{{side="{side}"}}[$step]))'
)


def check_schedule(schedule: list[float]) -> list[float]:
    """``schedule`` if its shares rise strictly, each in (0, 100]; else a ValueError naming why."""
    if not schedule:
        raise ValueError("the schedule is empty: give the shares to step through, e.g. 5,25,50,100")
    for share in schedule:
        if not 0 < share <= 100:
            raise ValueError(
                f"share {share:g} is not in (0, 100] (schedule {schedule_text(schedule)})"
            )
    for before, after in itertools.pairwise(schedule):
        if after <= before:
            raise ValueError(
                f"the schedule must rise at every step: {after:g} follows {before:g} "
                f"(schedule {schedule_text(schedule)})"
            )
    return schedule


def schedule_text(schedule: list[float]) -> str:
    """``5,25,50,100``."""
    return ",".join(f"{s:g}" for s in schedule)


class Check(Section):
    """One query of the analysis and the limit its value must keep."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9_]+$")
    query: str = Field(min_length=1, description="PromQL giving one number")
    max: float | None = None
    min: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _one_limit(self) -> Check:
        if (self.max is None) == (self.min is None):
            raise ValueError(f"check {self.name!r} needs exactly one of max and min")
        unknown = sorted(set(_placeholders(self.query)) - set(PLACEHOLDERS))
        if unknown:
            raise ValueError(
                f"check {self.name!r}: ${', $'.join(unknown)} is not one of the placeholders "
                f"(${', $'.join(PLACEHOLDERS)})"
            )
        return self

    def promql(self, version: str, step_seconds: float) -> str:
        """The query with its placeholders filled in."""
        return fill(self.query, version, step_seconds)


def fill(query: str, version: str, step_seconds: float) -> str:
    """``query`` with $version and $step (whole seconds, at least 1) filled in."""
    return Template(query).substitute(version=version, step=f"{max(1, round(step_seconds))}s")


def _placeholders(query: str) -> list[str]:
    return [m.group("named") or m.group("braced") for m in Template.pattern.finditer(query)
            if m.group("named") or m.group("braced")]  # fmt: skip


def default_checks() -> list[Check]:
    """The analysis of a step: errors, latency, answers and drift, canary against champion."""
    canary_v = ',version="$version"'
    return [
        Check(
            name="error_rate",
            query=f"({_ERRORS.format(side='canary', v=canary_v)}) - "
            f"({_ERRORS.format(side='champion', v='')})",
            max=0.01,
            description="the canary's share of failed answers, above the champion's",
        ),
        Check(
            name="p99_latency_ratio",
            query=f"({_P99.format(side='canary')}) / ({_P99.format(side='champion')})",
            max=1.5,
            description="the canary's 99th percentile time to answer over the champion's",
        ),
        Check(
            name="answer_share_gap",
            query=f"max(abs(({_SHARES.format(side='canary')}) - ({_SHARES.format(side='champion')})))",
            max=0.15,
            description="the largest gap between the two sides' share of a class (clients are "
            "split by a hash, so both see the same mix of photos)",
        ),
        Check(
            name="drift_alerts",
            query='count(ALERTS{alertstate="firing",alertname=~"CarinspectDrift(Image|Embedding)"}) '
            "or vector(0)",
            max=0,
            description="input drift alerts firing (the PrometheusRule of k8s/monitoring): the "
            "photos no longer look like the training photos, so no figure of this step means much",
        ),
    ]


class RolloutConfig(Section):
    """`carinspect rollout`: a canary's share stepped through a schedule, by analysis."""

    alias: str = Field(
        "challenger", min_length=1, description="the canary alias serving follows (CANARY_ALIAS)"
    )
    schedule: list[float] = Field(
        [5.0, 25.0, 50.0, 100.0],
        description="percent of clients the canary answers at each step; rising, in (0, 100]",
    )
    min_requests: int = Field(
        200, ge=1, description="canary answers a step needs before its analysis counts"
    )
    requests_query: str = Field(
        'sum(increase(carinspect_answers_total{side="canary",version="$version"}[$step]))',
        min_length=1, description="PromQL: the canary's answers at this step (vs min_requests)",
    )  # fmt: skip
    interval_s: float = Field(
        60.0, gt=0, description="rollout run: seconds between two looks at the analysis"
    )
    prometheus_url: str = Field(
        "http://prometheus-operated.monitoring.svc:9090",
        description="the Prometheus that scrapes the service (PROMETHEUS_URL overrides)",
    )
    timeout_s: float = Field(10.0, gt=0, description="one Prometheus query's time limit")
    checks: list[Check] = Field(
        default_factory=default_checks,
        description="the analysis: each query's value must keep its limit ($version, $step)",
    )

    @field_validator("schedule")
    @classmethod
    def _rising(cls, value: list[float]) -> list[float]:
        return check_schedule(value)

    @field_validator("requests_query")
    @classmethod
    def _known(cls, value: str) -> str:
        unknown = sorted(set(_placeholders(value)) - set(PLACEHOLDERS))
        if unknown:
            raise ValueError(f"${', $'.join(unknown)} is not one of ${', $'.join(PLACEHOLDERS)}")
        return value

    def requests_promql(self, version: str, step_seconds: float) -> str:
        """requests_query with its placeholders filled in."""
        return fill(self.requests_query, version, step_seconds)

    @field_validator("checks")
    @classmethod
    def _unique(cls, value: list[Check]) -> list[Check]:
        names = [c.name for c in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"check names must be unique: {', '.join(twice)} appear twice")
        return value
