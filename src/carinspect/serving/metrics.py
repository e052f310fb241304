"""Prometheus metrics of one app instance (its own registry: several apps can share a process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from carinspect.drift.profile import DriftWindow

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
            ["name", "version", "alias", "provider", "precision"], registry=r,
        )  # fmt: skip
        self.model_ready = Gauge(
            "carinspect_model_ready", "1 when a model is loaded and answering, 0 when not (yet)",
            registry=r,
        )  # fmt: skip
        self.reloads = Counter("carinspect_model_reloads", "models swapped in", registry=r)
        self.reload_failures = Counter(
            "carinspect_model_reload_failures", "model loads that failed", registry=r
        )
        self.registry_reachable = Gauge(
            "carinspect_registry_reachable", "1 when the last poll reached the model registry, "
            "0 when it could not (the loaded model keeps serving); absent for a local folder",
            registry=r,
        )  # fmt: skip
        # drift of the photos answered against the version's drift.json (DRIFT_WINDOW of them)
        self.drift_psi = Gauge(
            "carinspect_drift_psi", "population stability index of an image statistic",
            ["stat"], registry=r,
        )  # fmt: skip
        self.drift_class_psi = Gauge(
            "carinspect_drift_class_psi", "PSI of the answered labels against the train shares",
            ["task"], registry=r,
        )  # fmt: skip
        self.drift_window = Gauge(
            "carinspect_drift_window_images", "answered photos the drift scores are over",
            registry=r,
        )  # fmt: skip
        self.drift_alert = Gauge(
            "carinspect_drift_alert_psi", "the PSI above which a score is an alert", registry=r
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
        self.canary_percent = Gauge(
            "carinspect_canary_percent", "share of clients the canary answers now (the rollout's "
            "recorded in the registry, else CANARY_PERCENT)", registry=r,
        )  # fmt: skip
        # each answer by the side that gave it: what a rollout's analysis compares
        self.answers = Counter(
            "carinspect_answers", "photos answered (ok) or failed in the model (error), by the "
            "side that answered (champion, canary) and its version",
            ["side", "version", "outcome"], registry=r,
        )  # fmt: skip
        self.answered_class = Counter(
            "carinspect_answered_class", "photos answered, by side, task and the class answered",
            ["side", "task", "class"], registry=r,
        )  # fmt: skip
        self.answer_seconds = Histogram(
            "carinspect_answer_seconds", "time from upload to answer, by side (decode, queue, "
            "inference)", ["side"], buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.shadow_agreement = Counter(
            "carinspect_shadow_agreement", "photos answered by both, by the two labels",
            ["task", "champion_class", "challenger_class"], registry=r,
        )  # fmt: skip
        self.shadow_disagreements = Counter(
            "carinspect_shadow_disagreements", "photos the shadow answered otherwise, by task",
            ["task"], registry=r,
        )  # fmt: skip
        self.shadow_skipped = Counter(
            "carinspect_shadow_skipped", "photos not shadowed: too many comparisons pending",
            registry=r,
        )  # fmt: skip
        self.shadow_errors = Counter(
            "carinspect_shadow_errors", "shadow answers that failed (the client's did not)",
            registry=r,
        )  # fmt: skip
        # FEEDBACK_DIR: answered photos kept for review (serving/feedback.py)
        self.feedback_saved = Counter(
            "carinspect_feedback_saved", "answered photos kept in FEEDBACK_DIR", registry=r
        )
        self.feedback_kept = Counter(
            "carinspect_feedback_kept", "photos kept in FEEDBACK_DIR, by their strongest reason "
            "(random, uncertain, margin, mc_spread, drift, disagreement)",
            ["reason"], registry=r,
        )  # fmt: skip
        self.feedback_skipped = Counter(
            "carinspect_feedback_skipped", "photos picked but not kept, by why (busy: the "
            "writer's queue was full; duplicate; full: FEEDBACK_MAX_MB; error; budget_hour, "
            "budget_class: FEEDBACK_PER_HOUR, FEEDBACK_PER_CLASS_PER_HOUR spent)",
            ["reason"], registry=r,
        )  # fmt: skip

    def observe_batch(self, size: int, waits: list[float], seconds: float) -> None:
        """One onnxruntime call: its size, each image's queue time, its duration."""
        self.batch_size.observe(size)
        for w in waits:
            self.queue_seconds.observe(w)
        self.inference_seconds.observe(seconds)

    def side_ready(self, side: str, version: str | None) -> None:
        """Export ``side``'s answer counters at 0 from the moment its model serves.

        So a rate of errors is 0, not missing, while there are none.
        """
        for outcome in ("ok", "error"):
            self.answers.labels(side, version or "", outcome)

    def answered(
        self, side: str, version: str | None, labels: dict[str, str], seconds: float
    ) -> None:
        """One photo answered by ``side`` (champion or canary): count, class and time."""
        self.answers.labels(side, version or "", "ok").inc()
        for task, label in labels.items():
            self.answered_class.labels(side, task, label).inc()
        self.answer_seconds.labels(side).observe(seconds)

    def serving(
        self,
        name: str | None,
        version: str | None,
        alias: str | None,
        provider: str,
        precision: str = "fp32",
    ) -> None:
        """Point the model gauge at the version now serving."""
        self.model_version.clear()
        self.model_version.labels(name or "", version or "", alias or "", provider, precision).set(
            1
        )

    def registry_state(self, reachable: bool | None) -> None:
        """Set the registry gauge from the store's last poll (left unset for a local folder)."""
        if reachable is not None:
            self.registry_reachable.set(1 if reachable else 0)

    def second_model(self, mode: str, alias: str, version: str | None) -> None:
        """Point the second model's gauge at the shadow or canary version now loaded."""
        self.second_version.clear()
        self.second_version.labels(mode, alias, version or "").set(1)

    def drift(self, window: DriftWindow | None, minimum: int = 1) -> None:
        """Set the drift gauges from the serving model's window (cleared without one).

        The scores stay unpublished until the window holds ``minimum`` photos; the window's
        size always is.
        """
        for gauge in (self.drift_psi, self.drift_class_psi):
            gauge.clear()
        if window is None or len(window) < minimum:
            self.drift_window.set(0 if window is None else len(window))
            return
        scores = window.scores()
        for stat, value in scores["image"].items():
            self.drift_psi.labels(stat).set(value)
        for task, value in scores["classes"].items():
            self.drift_class_psi.labels(task).set(value)
        self.drift_window.set(len(window))
        self.drift_alert.set(window.profile.alert_psi)
