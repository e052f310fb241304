"""10,000 requests at concurrency 64 against a real server: zero errors, memory reported."""

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import Server, image_bytes


async def _drive(url: str, total: int, concurrency: int, data: bytes) -> dict[int, int]:
    statuses: dict[int, int] = {}
    remaining = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            for _ in remaining:
                r = await client.post(url, files={"file": ("car.jpg", data, "image/jpeg")})
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def test_ten_thousand_requests_at_concurrency_64(
    serve: Callable[..., Server], upstream: dict[str, Path], record_property: Callable[..., None]
) -> None:
    s = serve(MODEL_URI=str(upstream["export"]))
    data = image_bytes("JPEG", size=(64, 48))
    asyncio.run(_drive(s.url + "/predict", 500, 64, data))  # warm: allocator, thread pools
    before = s.rss_kb()
    statuses = asyncio.run(_drive(s.url + "/predict", 10_000, 64, data))
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
