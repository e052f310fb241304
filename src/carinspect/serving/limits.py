"""ASGI middleware: what one request may cost (body size, memory, time) and request metrics."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carinspect.serving.budget import Full, MemoryBudget
from carinspect.serving.metrics import ServingMetrics


class _TooLarge(Exception):
    pass


class _Stalled(Exception):
    """The next piece of the body did not come within BODY_TIMEOUT_S."""


async def _send_json(
    send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class Deadlines:
    """How long a request may take: per piece of its body, and in all (seconds; None: no bound)."""

    body_s: float | None = None
    request_s: float | None = None


class BodyLimit:
    """Bound what one request may cost: its body's size, memory, pace and the whole request's time.

    - Size: a declared length over the path's limit is refused (413) before any byte is read; a
      chunked body is counted as it arrives and cut off at the limit.
    - Memory: the body's declared length (a chunked body: the limit) is held in ``budget``
      before it is read; when the budget stays full for ``wait_s``, 503 with Retry-After.
    - Pace: each piece of the body must come within ``deadlines.body_s`` (else 408, closed), and
      the whole request must be answered within ``deadlines.request_s`` (408 while the body is
      still arriving, else 503).
    """

    def __init__(
        self,
        app: ASGIApp,
        default_limit: int,
        limits: dict[str, int],
        budget: MemoryBudget | None = None,
        wait_s: float = 10.0,
        deadlines: Deadlines = Deadlines(),
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = limits
        self.budget = budget
        self.wait_s = wait_s
        self.deadlines = deadlines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the declared length, hold its memory, then run the app within its deadlines."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default_limit)
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, "Content-Length is not a number")
                return
            if int(declared) > limit:
                await _send_json(
                    send, 413, f"request body of {int(declared)} bytes exceeds {limit}"
                )
                return
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        needed = limit if chunked else int(declared or 0)
        if self.budget is None or needed == 0:
            await self._limited(scope, receive, send, limit, needed > 0)
            return
        try:
            async with self.budget.hold(needed, self.wait_s):
                await self._limited(scope, receive, send, limit, True)
        except Full as err:
            retry = [(b"retry-after", str(err.retry_after).encode())]
            await _send_json(send, 503, str(err), retry)

    async def _limited(
        self, scope: Scope, receive: Receive, send: Send, limit: int, has_body: bool
    ) -> None:
        received = 0
        tripped: int | None = None  # the status that replaces the app's answer
        started = False
        body_done = False

        async def limited() -> Message:
            nonlocal received, tripped, body_done
            if body_done or self.deadlines.body_s is None:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout(self.deadlines.body_s):
                        message = await receive()
                except TimeoutError:
                    tripped = 408
                    raise _Stalled from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    tripped = 413
                    raise _TooLarge
                body_done = not message.get("more_body", False)
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if tripped is not None:  # the app answered a cut-off body: the reason is ours
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _send_json(send, tripped, _why(tripped, limit, self.deadlines))
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            async with asyncio.timeout(self.deadlines.request_s):
                await self.app(scope, limited, guarded)
        except (_TooLarge, _Stalled):
            if not started:
                assert tripped is not None
                await _send_json(send, tripped, _why(tripped, limit, self.deadlines))
        except TimeoutError:
            if not started:
                status = 408 if has_body and not body_done else 503
                retry = [(b"retry-after", b"1")] if status == 503 else []
                await _send_json(send, status, _why(-status, limit, self.deadlines), retry)


def _why(status: int, limit: int, deadlines: Deadlines) -> str:
    """The detail of a refusal made here; a negative status: the whole request ran out of time."""
    if status == 413:
        return f"request body exceeds {limit} bytes"
    if status == 408:
        return f"the request body stalled: no data for {deadlines.body_s:g} s (BODY_TIMEOUT_S)"
    if status == -408:
        return (
            f"the request body did not arrive within {deadlines.request_s:g} s (REQUEST_TIMEOUT_S)"
        )
    return f"no answer within {deadlines.request_s:g} s (REQUEST_TIMEOUT_S): the server is busy"


class RequestMetrics:
    """Count and time every request by route template, method and status."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request and record its status."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route: Any = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            labels = (path, scope["method"], str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
