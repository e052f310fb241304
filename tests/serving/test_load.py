"""10,000 requests at concurrency 64 against a real server: zero errors, memory reported."""

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import Server, image_bytes


def _request(port: int, data: bytes) -> bytes:
    """One keep-alive multipart POST /predict, encoded once (the client must stay cheap)."""
    boundary = "loadtest"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="car.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _drive(port: int, total: int, concurrency: int, data: bytes) -> dict[int, int]:
    """``total`` requests over ``concurrency`` keep-alive connections; count by status."""
    statuses: dict[int, int] = {}
    remaining = iter(range(total))
    request = _request(port, data)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in remaining:
                writer.write(request)
                status_line = await reader.readline()
                status = int(status_line.split()[1]) if status_line else 0
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return statuses


@pytest.mark.slow
def test_ten_thousand_requests_at_concurrency_64(
    serve: Callable[..., Server], upstream: dict[str, Path], record_property: Callable[..., None]
) -> None:
    s = serve(MODEL_URI=str(upstream["export"]))
    data = image_bytes("JPEG", size=(64, 48))
    port = int(s.url.rsplit(":", 1)[1])
    asyncio.run(_drive(port, 500, 64, data))  # warm: allocator, thread pools
    before = s.rss_kb()
    statuses = asyncio.run(_drive(port, 10_000, 64, data))
    after = s.rss_kb()
    growth_mb = (after - before) / 1024
    record_property("rss_growth_mb", round(growth_mb, 1))
    sys.stderr.write(
        f"\n10,000 requests at concurrency 64: {statuses}; server RSS {before / 1024:.0f} MB -> "
        f"{after / 1024:.0f} MB ({growth_mb:+.1f} MB)\n"
    )
    assert statuses == {200: 10_000}
    assert growth_mb < 100, f"RSS grew by {growth_mb:.0f} MB over 10,000 requests"
    metrics = httpx.get(s.url + "/metrics").text
    count = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('carinspect_requests_total{method="POST",route="/predict",status="200"}')
    )
    assert count == pytest.approx(10_500)
