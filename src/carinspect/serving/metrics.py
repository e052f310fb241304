"""Prometheus metrics of one app instance (its own registry: several apps can share a process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class ServingMetrics:
    """Counters and histograms exported on /metrics."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "carinspect_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "carinspect_request_seconds", "HTTP request latency", ["route", "method", "status"],
            buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "carinspect_batch_size", "images per onnxruntime call", buckets=_BATCH, registry=r
        )
        self.queue_seconds = Histogram(
            "carinspect_queue_seconds", "time an image waited for its batch", buckets=_LATENCY,
            registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "carinspect_inference_seconds", "onnxruntime time per batch", buckets=_LATENCY,
            registry=r,
        )  # fmt: skip
        self.model_version = Gauge(
            "carinspect_model_version", "1 for the model version serving now",
            ["name", "version", "alias", "provider"], registry=r,
        )  # fmt: skip
        self.reloads = Counter("carinspect_model_reloads", "models swapped in", registry=r)
        self.reload_failures = Counter(
            "carinspect_model_reload_failures", "model loads that failed", registry=r
        )
        # SHADOW / CANARY_PERCENT: the second alias served beside MODEL_URI's (serving/second.py)
        self.second_version = Gauge(
            "carinspect_second_model_version", "1 for the shadow or canary version loaded now",
            ["mode", "alias", "version"], registry=r,
        )  # fmt: skip
        self.second_reload_failures = Counter(
            "carinspect_second_model_reload_failures", "shadow or canary loads that failed",
            ["mode"], registry=r,
        )  # fmt: skip
        self.shadow_agreement = Counter(
            "carinspect_shadow_agreement", "photos answered by both, by the two labels",
            ["task", "champion_class", "challenger_class"], registry=r,
        )  # fmt: skip
        self.shadow_skipped = Counter(
            "carinspect_shadow_skipped", "photos not shadowed: too many comparisons pending",
            registry=r,
        )  # fmt: skip
        self.shadow_errors = Counter(
            "carinspect_shadow_errors", "shadow answers that failed (the client's did not)",
            registry=r,
        )  # fmt: skip

    def observe_batch(self, size: int, waits: list[float], seconds: float) -> None:
        """One onnxruntime call: its size, each image's queue time, its duration."""
        self.batch_size.observe(size)
        for w in waits:
            self.queue_seconds.observe(w)
        self.inference_seconds.observe(seconds)

    def serving(
        self, name: str | None, version: str | None, alias: str | None, provider: str
    ) -> None:
        """Point the model gauge at the version now serving."""
        self.model_version.clear()
        self.model_version.labels(name or "", version or "", alias or "", provider).set(1)

    def second_model(self, mode: str, alias: str, version: str | None) -> None:
        """Point the second model's gauge at the shadow or canary version now loaded."""
        self.second_version.clear()
        self.second_version.labels(mode, alias, version or "").set(1)
