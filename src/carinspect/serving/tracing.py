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
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carinspect.serving.batcher import BatchTiming

logger = logging.getLogger(__name__)

HEADER = "x-trace-id"
SCOPE = "carinspect.serving"  # the instrumentation scope of every span
_PROPAGATOR = TraceContextTextMapPropagator()
# the trace id of the request being handled, for the log lines written meanwhile
current_trace: ContextVar[str | None] = ContextVar("carinspect_trace_id", default=None)


@dataclass
class _Request:
    """The server span of a request being handled: what it becomes once answered."""

    name: str
    path: str
    context: SpanContext
    parent: SpanContext | None
    sampled: bool
    start: float = 0.0  # perf_counter seconds
    status: int = 0
    events: list[tuple[str, float]] = field(default_factory=list)


# the sampled request being handled (its events are added here)
_current_request: ContextVar[_Request | None] = ContextVar("carinspect_request", default=None)


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
    """The app's spans (none when tracing is off), their sampler and the exporter's lifetime."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.on = wanted(env)
        # perf_counter seconds -> epoch nanoseconds, fixed once so that intervals line up
        self._offset = time.time_ns() - time.perf_counter_ns()
        self._provider: Any = None
        self._steps: Any = None  # (processor, resource, scope, id generator) of the step spans
        if self.on:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope

            made = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or
                                    "carinspect-serving"})  # fmt: skip
            resource = _hashed_once(made)
            processor = BatchSpanProcessor(OTLPSpanExporter())
            self._provider = TracerProvider(resource=resource)
            self._provider.add_span_processor(processor)
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
        request = _current_request.get()
        if request is not None:
            request.events.append((name, time.perf_counter()))

    def open(self, method: str, path: str, parent: otel_context.Context | None) -> _Request:
        """A request's server span begins: its ids, continuing ``parent``, and the sampler's word.

        The span is not an SDK span: the request is timed and described here and handed to the
        span processor as a finished span at :meth:`close` (the SDK's per-span machinery of
        locks and attribute limits costs a server doing hundreds of requests a second).
        """
        incoming = trace.get_current_span(parent).get_span_context() if parent else None
        remote = incoming if incoming is not None and incoming.is_valid else None
        ids = self._steps[3]
        trace_id = remote.trace_id if remote is not None else ids.generate_trace_id()
        name = f"{method} {path}"
        sampling = self._provider.sampler.should_sample(parent, trace_id, name, SpanKind.SERVER)
        sampled = sampling.decision.is_sampled()
        flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
        context = SpanContext(trace_id, ids.generate_span_id(), False, flags, sampling.trace_state)
        return _Request(method, path, context, remote, sampled, time.perf_counter())

    def close(self, request: _Request, route: str | None) -> None:
        """The answered request's span, named by its route, to the span processor."""
        from opentelemetry.sdk.trace import Event, ReadableSpan

        processor, resource, scope, _ = self._steps
        attributes: dict[str, Any] = {"http.request.method": request.name, "url.path": request.path,
                                      "http.response.status_code": request.status}  # fmt: skip
        if route:
            attributes["http.route"] = route
        status = Status(StatusCode.ERROR) if request.status >= 500 else Status(StatusCode.UNSET)
        processor.on_end(ReadableSpan(
            f"{request.name} {route or request.path}", request.context, request.parent, resource,
            attributes, [Event(n, timestamp=self._ns(t)) for n, t in request.events],
            kind=SpanKind.SERVER, status=status, instrumentation_scope=scope,
            start_time=self._ns(request.start), end_time=self._ns(time.perf_counter()),
        ))  # fmt: skip

    def _ns(self, perf: float) -> int:
        """perf_counter seconds as epoch nanoseconds."""
        return self._offset + int(perf * 1e9)

    def _finished(
        self, parent: SpanContext, name: str, start: float, end: float, attributes: dict[str, Any]
    ) -> None:
        from opentelemetry.sdk.trace import ReadableSpan

        processor, resource, scope, ids = self._steps
        context = SpanContext(parent.trace_id, ids.generate_span_id(), False,
                              parent.trace_flags, parent.trace_state)  # fmt: skip
        processor.on_end(ReadableSpan(
            name, context, parent, resource, attributes, instrumentation_scope=scope,
            start_time=self._ns(start), end_time=self._ns(end),
        ))  # fmt: skip


def _hashed_once(resource: Any) -> Any:
    """``resource`` with its hash computed once instead of once per span exported.

    OTLP's encoder groups spans by resource, and the SDK's Resource hashes itself by dumping its
    attributes to JSON every time: a third of the encoding's cost per span, on a server that
    sends four spans a request. The attributes never change after start-up.
    """
    from opentelemetry.sdk.resources import Resource

    class _Resource(Resource):
        _hash: int | None = None

        def __hash__(self) -> int:
            if self._hash is None:
                self._hash = super().__hash__()
            return self._hash

    return _Resource(resource.attributes, resource.schema_url)


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
        span = self.tracing.open(scope["method"], scope["path"], parent)
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(span.context)))
        request = _current_request.set(span if span.sampled else None)
        try:
            await self._run(scope, receive, send, f"{span.context.trace_id:032x}", span)
        finally:
            _current_request.reset(request)
            otel_context.detach(token)
            if span.sampled:
                self.tracing.close(span, getattr(scope.get("route"), "path", None))

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        trace_id: str | None,
        span: _Request | None,
    ) -> None:
        if trace_id is None:
            await self.app(scope, receive, send)
            return
        header = (HEADER.encode(), trace_id.encode())

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
                if span is not None:
                    span.status = int(message["status"])
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
