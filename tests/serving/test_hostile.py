"""What a hostile or broken client can make one request cost: answered, bounded, never a 500.

Each case is one a probe of the running server found (issue 38), tried on a real `carinspect
serve` over raw sockets where an HTTP client would not misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from carinspect.serving.budget import Full, MemoryBudget
from tests.conftest import Server, start_server, stop_process
from tests.serving.conftest import image_bytes

LIMITS = {
    "HEADER_TIMEOUT_S": "1",
    "BODY_TIMEOUT_S": "1",
    "REQUEST_TIMEOUT_S": "20",
    "QUEUE_WAIT_S": "1",
    "BODY_MEMORY_MB": "1",
    "MAX_UPLOAD_MB": "2",
    "MAX_BATCH_MB": "1",
    "DECODE_MEMORY_MB": "192",
}


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory, upstream: dict[str, Path]
) -> Iterator[Server]:
    """A server with short deadlines and small budgets, so each bound is reached quickly."""
    server = start_server(
        tmp_path_factory.mktemp("guarded"), {"MODEL_URI": str(upstream["export"]), **LIMITS}
    )
    yield server
    stop_process(server.proc)


def _connect(server: Server) -> socket.socket:
    port = int(server.url.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _answer_then_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails if it never does)."""
    got = b""
    started = time.monotonic()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk
        assert time.monotonic() - started < 10, "the server kept the connection open"


def _upload_head(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _metric(server: Server, route: str, status: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    pattern = rf'carinspect_requests_total{{method="POST",route="{re.escape(route)}",status="{status}"}} (\S+)'
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le"],
    ids=["idle connection", "half-sent headers"],
)
def test_a_connection_without_complete_headers_gets_408_and_is_closed(
    guarded: Server, sent: bytes
) -> None:
    with _connect(guarded) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        answer = _answer_then_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"HEADER_TIMEOUT_S" in answer
    assert time.monotonic() - started < 5


def test_a_body_shorter_than_its_content_length_gets_408_and_is_closed(guarded: Server) -> None:
    with _connect(guarded) as sock:
        sock.sendall(_upload_head("/predict", 100_000) + b"--b\r\n")
        answer = _answer_then_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"BODY_TIMEOUT_S" in answer and b"connection: close" in answer.lower()
    assert httpx.get(guarded.url + "/healthz").status_code == 200


def test_a_client_gone_mid_upload_is_counted_499_never_500(guarded: Server) -> None:
    before = _metric(guarded, "/predict", "499")
    for _ in range(3):
        with _connect(guarded) as sock:
            sock.sendall(_upload_head("/predict", 200_000) + b"--b\r\n" + b"x" * 5000)
    deadline = time.monotonic() + 10
    while _metric(guarded, "/predict", "499") < before + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _metric(guarded, "/predict", "499") == before + 3
    assert _metric(guarded, "/predict", "500") == 0
    log = guarded.log.read_text()
    assert "Traceback" not in log
    assert log.count("the client closed the connection") >= 3


def test_predict_file_is_the_seed_api_path_of_predict(guarded: Server) -> None:
    files = {"file": ("car.jpg", image_bytes(), "image/jpeg")}
    seed = httpx.post(guarded.url + "/predict/file", files=files)
    ours = httpx.post(guarded.url + "/predict", files=files)
    assert seed.status_code == 200, seed.text
    drop = ("processing_ms",)
    assert {k: v for k, v in seed.json().items() if k not in drop} == {
        k: v for k, v in ours.json().items() if k not in drop
    }
    paths = httpx.get(guarded.url + "/openapi.json").json()["paths"]
    assert "/predict/file" in paths and "multipart/form-data" in str(paths["/predict/file"])


def test_a_batch_body_over_max_batch_mb_is_413(guarded: Server) -> None:
    files = [("files", (f"{i}.png", b"\x89PNG" + bytes(400_000), "image/png")) for i in range(3)]
    answer = httpx.post(guarded.url + "/predict/batch", files=files)
    assert answer.status_code == 413, answer.text
    assert "exceeds" in answer.json()["detail"]


def test_body_memory_full_is_503_with_retry_after(guarded: Server) -> None:
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:  # slow, but never stalled past BODY_TIMEOUT_S
        while not stop.wait(0.2):
            sock.sendall(b"x" * 100)

    with _connect(guarded) as holder:  # declares 0.9 MB of the 1 MB budget
        holder.sendall(_upload_head("/predict", 900_000) + b"--b\r\n")
        sender = threading.Thread(target=trickle, args=(holder,))
        sender.start()
        try:
            time.sleep(0.3)
            answer = httpx.post(
                guarded.url + "/predict", files={"file": ("car.png", bytes(300_000), "image/png")}
            )
        finally:
            stop.set()
            sender.join()
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    assert "request body memory" in answer.json()["detail"]


def _sixteen_bit_png(side: int) -> bytes:
    """The probe's 75 KB upload: 16-bit grey, ~40 M pixels, every pixel the same."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), 40_000, dtype=np.uint16)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_small_file_that_decodes_huge_is_served_within_the_budget_or_refused(
    guarded: Server, tmp_path: Path, upstream: dict[str, Path]
) -> None:
    data = _sixteen_bit_png(6300)
    assert len(data) < 200_000
    answer = httpx.post(guarded.url + "/predict", files={"file": ("grey.png", data)}, timeout=60)
    assert answer.status_code == 200, answer.text
    tight = start_server(
        tmp_path, {"MODEL_URI": str(upstream["export"]), **LIMITS, "DECODE_MEMORY_MB": "32"}
    )
    try:
        refused = httpx.post(tight.url + "/predict", files={"file": ("grey.png", data)})
    finally:
        stop_process(tight.proc)
    assert refused.status_code == 422, refused.text
    assert "decode_budget" in refused.text and "6300x6300 I;16 PNG" in refused.text


def test_the_budget_grants_in_arrival_order_and_refuses_after_the_wait() -> None:
    async def scenario() -> list[str]:
        budget = MemoryBudget("test", 100)
        order: list[str] = []

        async def holder(name: str, size: int, seconds: float, wait: float = 5.0) -> None:
            try:
                async with budget.hold(size, wait):
                    order.append(name)
                    await asyncio.sleep(seconds)
            except Full:
                order.append(f"{name} full")

        first = asyncio.create_task(holder("big", 80, 0.3))
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(holder("second big", 60, 0.0))
        await asyncio.sleep(0.01)
        small = asyncio.create_task(holder("small", 10, 0.0))  # fits, but waits its turn
        tiny = asyncio.create_task(holder("tiny", 5, 0.0))  # 1/16 or less: let through at once
        shed = asyncio.create_task(holder("shed", 90, 0.0, wait=0.05))
        cancelled = asyncio.create_task(holder("cancelled", 50, 0.0))
        await asyncio.sleep(0.1)
        cancelled.cancel()
        await asyncio.gather(first, waiting, small, tiny, shed, return_exceptions=True)
        assert budget.used == 0 and budget.peak <= 100
        return order

    assert asyncio.run(scenario()) == ["big", "tiny", "shed full", "second big", "small"]
