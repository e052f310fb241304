"""A rollout step's analysis: the params' queries asked of Prometheus, each against its limit.

Each query must give one number. An empty answer (no series yet, a ratio over nothing) or NaN
is "no data": the step holds. A value outside its limit fails the step. Prometheus that cannot
be reached, or that refuses a query, is an error the caller turns into a hold: a rollout never
moves on figures it could not read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from carinspect.config import Check, RolloutConfig
from carinspect.errors import InputError


class PrometheusError(InputError):
    """Prometheus could not be asked, or refused the query; the message names both."""


@dataclass(frozen=True)
class Figure:
    """One check's query, value and limit, and whether the value keeps it (None: no data)."""

    name: str
    query: str
    value: float | None
    limit: str  # "<= 0.01", ">= 0.9"
    passed: bool | None

    def describe(self) -> str:
        """``error_rate = 0.0412 (limit <= 0.01)``."""
        shown = "no data" if self.value is None else f"{self.value:.4g}"
        return f"{self.name} = {shown} (limit {self.limit})"


@dataclass(frozen=True)
class Analysis:
    """Every check of one look at a step."""

    figures: list[Figure]

    @property
    def failed(self) -> list[Figure]:
        """The checks whose value broke its limit."""
        return [f for f in self.figures if f.passed is False]

    @property
    def missing(self) -> list[Figure]:
        """The checks that had no data."""
        return [f for f in self.figures if f.passed is None]

    @property
    def passed(self) -> bool:
        """Whether every check had data and kept its limit."""
        return all(f.passed for f in self.figures)

    def records(self) -> list[dict[str, Any]]:
        """The figures as the audit trail keeps them."""
        return [asdict(f) for f in self.figures]


class Prometheus:
    """Instant queries against one Prometheus server's HTTP API."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    def value(self, promql: str) -> float | None:
        """The one number ``promql`` gives now; None when it gives nothing (or NaN)."""
        try:
            got = self._http.get("/api/v1/query", params={"query": promql})
        except httpx.HTTPError as err:
            raise PrometheusError(
                f"{self.url}: Prometheus is not reachable ({type(err).__name__}: {err})"
            ) from None
        try:
            body = got.json()
        except ValueError:
            raise PrometheusError(
                f"{self.url}: answered HTTP {got.status_code} without JSON to {promql!r}"
            ) from None
        if body.get("status") != "success":
            raise PrometheusError(
                f"{self.url}: refused {promql!r}: {body.get('errorType')}: {body.get('error')}"
            )
        data = body["data"]
        if data["resultType"] == "scalar":
            number = float(data["result"][1])
        elif data["resultType"] == "vector":
            if not data["result"]:
                return None
            if len(data["result"]) > 1:
                raise PrometheusError(
                    f"{self.url}: {promql!r} gives {len(data['result'])} series, not one number "
                    "(aggregate it: sum(...), max(...))"
                )
            number = float(data["result"][0]["value"][1])
        else:
            raise PrometheusError(
                f"{self.url}: {promql!r} gives a {data['resultType']}, not one number"
            )
        return None if math.isnan(number) else number


def judge(check: Check, query: str, value: float | None) -> Figure:
    """The figure of ``check`` for ``value``."""
    if check.max is not None:
        limit, keeps = f"<= {check.max:g}", value is None or value <= check.max
    else:
        assert check.min is not None
        limit, keeps = f">= {check.min:g}", value is None or value >= check.min
    return Figure(check.name, query, value, limit, None if value is None else keeps)


def analyse(prom: Prometheus, cfg: RolloutConfig, version: str, step_seconds: float) -> Analysis:
    """Every check of ``cfg`` asked of ``prom`` for ``version`` over the step so far."""
    figures = []
    for check in cfg.checks:
        query = check.promql(version, step_seconds)
        figures.append(judge(check, query, prom.value(query)))
    return Analysis(figures)
