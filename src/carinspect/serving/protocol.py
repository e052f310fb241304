"""uvicorn's HTTP protocol with a deadline on a request's headers.

uvicorn closes a keep-alive connection that stays idle after a response, but nothing bounds a
connection that never sends a request, or sends half its headers and stops: each holds a socket,
a file descriptor and a parser until the client goes (a probe held 2,000 of them open past 90 s).
Here every connection must complete a request's headers within ``header_timeout_s`` of opening,
or of the first byte of its next request; otherwise it gets 408 and is closed. The ASGI app
never sees such a connection (there is no request yet), which is why this lives in the protocol
and not in a middleware; the body and the request as a whole are bounded in
:class:`carinspect.serving.limits.BodyLimit`.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` that answers 408 and closes when headers are too slow."""

    header_timeout_s: float = 10.0

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock: the first request's headers are due."""
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        """A request starts arriving (a keep-alive connection's next one): its headers are due."""
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        """The headers are in: the body and the request are bounded by the app's middleware."""
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Nothing is due from a closed connection."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its own deadlines apply
        body = b'{"detail": "request headers not complete within %g s (HEADER_TIMEOUT_S)"}' % (
            self.header_timeout_s
        )
        logger.debug("closing %s: headers not complete in time", self.client)
        self.transport.write(_REQUEST_TIMEOUT % (len(body), body))
        self.transport.close()


def protocol_with(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class uvicorn is given (``http=``), with the configured header deadline."""
    return type(
        "HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s}
    )
