"""moto's S3 server with a fixed delay before every answer: a stand-in for a real bucket.

A bucket in the same region answers a GET in roughly 10-30 ms before the first byte; moto on
127.0.0.1 answers in about 1 ms, which would flatter any loader that makes many small
requests. Run it as its own process (the loader under test must not share its GIL):

    python benchmarks/slow_s3.py --port 5123 --latency-ms 20
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable
from typing import Any


def delayed(app: Callable[..., Iterable[bytes]], seconds: float) -> Callable[..., Iterable[bytes]]:
    """A WSGI app that waits ``seconds`` before ``app`` answers each request."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        time.sleep(seconds)
        return app(environ, start_response)

    return wrapped


def main() -> None:
    from moto.moto_server.threaded_moto_server import MotoRequestHandler
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    args = ap.parse_args()
    app = delayed(DomainDispatcherApplication(create_backend_app), args.latency_ms / 1000)
    server = make_server(
        "127.0.0.1", args.port, app, threaded=True, request_handler=MotoRequestHandler
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
