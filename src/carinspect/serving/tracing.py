"""Tracing of a request: OpenTelemetry spans over OTLP/HTTP, configured by the OTEL_* variables.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set (and
neither ``OTEL_SDK_DISABLED=true`` nor ``OTEL_TRACES_EXPORTER=none``); the exporter, the sampler
(``OTEL_TRACES_SAMPLER``) and the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``)
read the rest of the standard variables themselves. A request's span continues an incoming W3C
``traceparent``; its children are decode, queue wait and inference (the batch it ran in, with
its size), and the hand-off to the observers (drift, feedback, shadow: an instant) is an event
of it.

The trace id goes back in the ``X-Trace-Id`` header and into every log line written while the
request is handled (uvicorn's access line included), also when tracing is off but the caller
sent a ``traceparent``: the id another system knows is then at least in our log.

The provider is this app's own, not the process-wide one (MLflow sets that for its tracing).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carinspect.serving.batcher import BatchTiming

logger = logging.getLogger(__name__)

HEADER = "x-trace-id"
SCOPE = "carinspect.serving"  # the instrumentation scope of every span
_PROPAGATOR = TraceContextTextMapPropagator()
# the trace id of the request being handled, for the log lines written meanwhile
current_trace: ContextVar[str | None] = ContextVar("carinspect_trace_id", default=None)


def wanted(env: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


class Tracing:
    """The app's tracer (a no-op one when tracing is off) and its exporter's lifetime."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.on = wanted(env)
        # perf_counter seconds -> epoch nanoseconds, fixed once so that intervals line up
        self._offset = time.time_ns() - time.perf_counter_ns()
        self._provider: Any = None
        self._steps: Any = None  # (processor, resource, scope, id generator) of the step spans
        self.tracer: trace.Tracer = trace.NoOpTracer()
        if self.on:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope

            resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or
                                        "carinspect-serving"})  # fmt: skip
            processor = BatchSpanProcessor(OTLPSpanExporter())
            self._provider = TracerProvider(resource=resource)
            self._provider.add_span_processor(processor)
            self.tracer = self._provider.get_tracer(SCOPE)
            self._steps = (processor, resource, InstrumentationScope(SCOPE), RandomIdGenerator())
            logger.info("tracing on: spans to %s", env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))  # fmt: skip

    def shutdown(self) -> None:
        """Send the spans still buffered (at server shutdown)."""
        if self._provider is not None:
            self._provider.shutdown()

    def steps(
        self, started: float, queued: float, batch: BatchTiming, side: str, version: str | None
    ) -> None:
        """A photo's decode, queue wait and inference as children of the request's span.

        Measured with ``time.perf_counter`` as the request went, and handed to the span
        processor as finished spans once it is answered. They follow the request span's
        sampling decision (as ParentBased samplers decide children), so the SDK's per-span
        machinery (sampler, locks, attribute limits) is skipped: a quarter of the cost
        (benchmarks/tracing_cost.py).
        """
        if not self.on:
            return
        parent = trace.get_current_span().get_span_context()
        if not parent.is_valid or not parent.trace_flags.sampled:
            return
        self._finished(parent, "decode", started, queued, {"carinspect.side": side})
        self._finished(parent, "queue wait", queued, batch.started, {})
        self._finished(parent, "inference", batch.started, batch.ended, {
            "carinspect.batch_size": batch.size, "carinspect.model_version": version or "",
        })  # fmt: skip

    def event(self, name: str) -> None:
        """A moment of the request's span (the hand-off to the observers: an instant, no span)."""
        if self.on:
            trace.get_current_span().add_event(name)

    def _finished(
        self, parent: SpanContext, name: str, start: float, end: float, attributes: dict[str, Any]
    ) -> None:
        from opentelemetry.sdk.trace import ReadableSpan

        processor, resource, scope, ids = self._steps
        context = SpanContext(parent.trace_id, ids.generate_span_id(), False,
                              parent.trace_flags, parent.trace_state)  # fmt: skip
        processor.on_end(ReadableSpan(
            name, context, parent, resource, attributes, instrumentation_scope=scope,
            start_time=self._offset + int(start * 1e9), end_time=self._offset + int(end * 1e9),
        ))  # fmt: skip


class TraceRequests:
    """ASGI middleware: one server span per HTTP request, its id in a header and the log."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request inside its span (or inside the caller's trace id only, when off)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"traceparent", b"tracestate")}  # fmt: skip
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        if not self.tracing.on:
            incoming = trace.get_current_span(parent) if parent is not None else None
            ctx = incoming.get_span_context() if incoming is not None else None
            trace_id = f"{ctx.trace_id:032x}" if ctx is not None and ctx.is_valid else None
            await self._run(scope, receive, send, trace_id, None)
            return
        method = scope["method"]
        span = self.tracing.tracer.start_span(
            f"{method} {scope['path']}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )  # fmt: skip
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self._run(scope, receive, send, f"{span.get_span_context().trace_id:032x}", span)
        finally:
            otel_context.detach(token)
            route = getattr(scope.get("route"), "path", None)
            if route:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            span.end()

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, trace_id: str | None, span: Span | None
    ) -> None:
        if trace_id is None:
            await self.app(scope, receive, send)
            return
        header = (HEADER.encode(), trace_id.encode())

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
                status = int(message["status"])
                if span is not None and not isinstance(span, NonRecordingSpan):
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
            await send(message)

        token = current_trace.set(trace_id)
        try:
            await self.app(scope, receive, sending)
        finally:
            current_trace.reset(token)


class TraceIdInLogs(logging.Filter):
    """Appends ``trace_id=<id>`` to the log lines written while a traced request is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keeps the record; adds the id when there is one."""
        trace_id = current_trace.get()
        if trace_id is not None and not getattr(record, "trace_id", None):
            record.msg = f"{record.getMessage()} trace_id={trace_id}"
            record.args = ()
            record.trace_id = trace_id
        return True


def log_trace_ids() -> None:
    """Put the filter on the root logger's handlers (once; the server's log set-up is done)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, TraceIdInLogs) for f in handler.filters):
            handler.addFilter(TraceIdInLogs())
