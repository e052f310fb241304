"""Tracing through the real server: spans over OTLP/HTTP to a receiver that decodes the wire
format with OpenTelemetry's own protobuf schema, the caller's traceparent continued, the trace id
in the response header and the access log line."""

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.serving.conftest import Server, image_bytes

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class _Receiver(BaseHTTPRequestHandler):
    """OTLP/HTTP's /v1/traces: each request decoded into (trace id, span id, parent, name, attrs)."""

    spans: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    _Receiver.spans.append({
                        "trace": span.trace_id.hex(), "id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(), "name": span.name,
                        "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                        "service": service.get("service.name"),
                        "attrs": {a.key: a.value for a in span.attributes},
                        "events": [e.name for e in span.events],
                    })  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def receiver() -> Iterator[str]:
    _Receiver.spans = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _post(server: Server, headers: dict[str, str] | None = None) -> httpx.Response:
    files = {"file": ("car.jpg", image_bytes(), "image/jpeg")}
    r = httpx.post(server.url + "/predict", files=files, headers=headers or {}, timeout=30)
    assert r.status_code == 200, r.text
    return r


def _spans_of(trace: str, names: set[str]) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        found = {s["name"]: s for s in _Receiver.spans if s["trace"] == trace}
        if names <= set(found):
            return found
        assert time.monotonic() < deadline, (names, _Receiver.spans)
        time.sleep(0.2)


NAMES = {"POST /predict", "decode", "queue wait", "inference"}


def test_a_traced_request_continues_the_callers_trace_with_its_steps(
    serve: Callable[..., Server], upstream: dict[str, Path], receiver: str
) -> None:
    s = serve(MODEL_URI=str(upstream["export"]), ACCESS_LOG="true",
              OTEL_EXPORTER_OTLP_ENDPOINT=receiver, OTEL_SERVICE_NAME="inspect-eu",
              OTEL_BSP_SCHEDULE_DELAY="100")  # fmt: skip
    r = _post(s, {"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert r.headers["x-trace-id"] == TRACE
    spans = _spans_of(TRACE, NAMES)
    root = spans["POST /predict"]
    assert root["parent"] == PARENT and root["service"] == "inspect-eu"
    assert root["attrs"]["http.route"].string_value == "/predict"
    assert root["attrs"]["http.response.status_code"].int_value == 200
    assert root["events"] == ["hand-off"]  # to the drift, feedback and shadow observers
    for name in NAMES - {"POST /predict"}:
        assert spans[name]["parent"] == root["id"], name
        assert root["start"] <= spans[name]["start"] <= spans[name]["end"] <= root["end"], name
    assert spans["inference"]["attrs"]["carinspect.batch_size"].int_value == 1
    assert spans["decode"]["end"] == spans["queue wait"]["start"]
    assert spans["queue wait"]["end"] == spans["inference"]["start"]
    log = s.log.read_text()
    assert f'"POST /predict HTTP/1.1" 200 trace_id={TRACE}' in log, log[-2000:]

    fresh = _post(s).headers["x-trace-id"]  # no caller trace: one of its own
    assert len(fresh) == 32 and fresh != TRACE
    assert _spans_of(fresh, NAMES)["POST /predict"]["parent"] == ""


def test_with_tracing_off_the_callers_trace_id_is_still_in_the_header_and_the_log(
    serve: Callable[..., Server], upstream: dict[str, Path]
) -> None:
    s = serve(MODEL_URI=str(upstream["export"]), ACCESS_LOG="true")
    assert "x-trace-id" not in _post(s).headers  # nothing to name
    assert _post(s, {"traceparent": f"00-{TRACE}-{PARENT}-01"}).headers["x-trace-id"] == TRACE
    assert f"200 trace_id={TRACE}" in s.log.read_text()
    bad = _post(s, {"traceparent": "00-not-a-trace-01"})  # a malformed one is ignored
    assert "x-trace-id" not in bad.headers


def test_the_standard_sampler_variables_decide_which_requests_are_traced(
    serve: Callable[..., Server], upstream: dict[str, Path], receiver: str
) -> None:
    # head sampling: none of our own traces, but a caller's sampled trace is continued
    s = serve(MODEL_URI=str(upstream["export"]), OTEL_EXPORTER_OTLP_ENDPOINT=receiver,
              OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0",
              OTEL_BSP_SCHEDULE_DELAY="100")  # fmt: skip
    fresh = _post(s).headers["x-trace-id"]  # not sampled: still an id to quote
    assert len(fresh) == 32
    _post(s, {"traceparent": f"00-{TRACE}-{PARENT}-01"})
    _spans_of(TRACE, NAMES)
    unsampled = "4bf92f3577b34da6a3ce929d0e0e4737"
    _post(s, {"traceparent": f"00-{unsampled}-{PARENT}-00"})  # the caller did not sample it
    _post(s, {"traceparent": f"00-{TRACE[::-1]}-{PARENT}-01"})  # sent after it: a fence
    _spans_of(TRACE[::-1], NAMES)
    assert {span["trace"] for span in _Receiver.spans} == {TRACE, TRACE[::-1]}
