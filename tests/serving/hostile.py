"""Hostile uploads and clients, as a probe of the running server tried them (issue 38).

Shared by the slow-tier test that runs them all at once against a real server under the
Deployment's memory limit (test_hostile_run.py) and by benchmarks/hostile_uploads.py, which
prints the server's peak memory for each.
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from carinspect.data.decoding.images import decode_cost
from carinspect.serving.settings import ServeSettings

BOUNDARY = "hostile-boundary"
DECODE_BUDGET = int(ServeSettings().decode_memory_mb * 2**20)  # the server's default


def sixteen_bit_png(side: int = 6300) -> bytes:
    """~75 KB of 16-bit grey PNG that is 40 M pixels: the probe's 1 GB upload."""
    out = io.BytesIO()
    Image.fromarray(np.full((side, side), 40_000, dtype=np.uint16)).save(out, "PNG")
    return out.getvalue()


def worst_decodable_side(budget_bytes: int) -> int:
    """The side of the largest square 16-bit PNG whose decode fits ``budget_bytes``.

    The worst upload a server still decodes (and answers 200) under DECODE_MEMORY_MB: the least
    bytes on the wire for the most memory. Sized for a short side of up to 256 px.
    """
    low, high = 16, 20_000
    while low < high:
        side = (low + high + 1) // 2
        if decode_cost("PNG", "I;16", (side, side), (256, 256)) <= budget_bytes:
            low = side
        else:
            high = side - 1
    return low


def float_tiff(side: int = 6300) -> bytes:
    """~250 KB float TIFF of 40 M pixels (the probe's +1,085 MB)."""
    out = io.BytesIO()
    Image.new("F", (side, side), 0.5).save(out, "TIFF", compression="tiff_adobe_deflate")
    return out.getvalue()


def rgba_png(side: int = 6300) -> bytes:
    """A transparent RGBA PNG of 40 M pixels (~150 KB)."""
    out = io.BytesIO()
    Image.new("RGBA", (side, side), (10, 20, 30, 0)).save(out, "PNG")
    return out.getvalue()


def palette_png(side: int = 6300) -> bytes:
    """A palette PNG with a transparent index, 40 M pixels (~5 KB)."""
    out = io.BytesIO()
    Image.new("P", (side, side)).save(out, "PNG", transparency=0)
    return out.getvalue()


def phone_photo(width: int = 2000, height: int = 1500, seed: int = 0) -> bytes:
    """A phone-sized JPEG with texture (quality 90): what a ride-hailing app uploads."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR).save(
        out, "JPEG", quality=90
    )
    return out.getvalue()


def multipart(field: str, files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with ``files`` under ``field``, and its content type."""
    parts = []
    for name, data in files:
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"'
            "\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def post_files(url: str, route: str, field: str, files: list[tuple[str, bytes]]) -> int:
    """POST ``files`` and return the status (a connection error: 0)."""
    body, ctype = multipart(field, files)
    try:
        return httpx.post(
            url + route, content=body, headers={"content-type": ctype}, timeout=120
        ).status_code
    except httpx.HTTPError:
        return 0


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def raw(url: str, sent: bytes, close_after: float | None = None) -> int:
    """Send ``sent`` on a raw connection; the status the server answers (0: closed without one).

    ``close_after``: hang up after that many seconds instead of waiting for an answer.
    """
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=60) as sock:
        sock.sendall(sent)
        if close_after is not None:
            time.sleep(close_after)
            return -1  # the client left: nothing to read
        got = b""
        while b"\r\n" not in got:
            chunk = sock.recv(4096)
            if not chunk:
                return 0
            got += chunk
        return int(got.split(b" ", 2)[1])


def upload_head(route: str, length: int, extra: str = "") -> bytes:
    """Request line and headers of a multipart upload of ``length`` bytes."""
    return (
        f"POST {route} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


@dataclass(frozen=True)
class Case:
    """One hostile request: ``send(url) -> status`` and the statuses that are a fair answer."""

    name: str
    send: Callable[[str], int]
    fair: frozenset[int]


def cases() -> list[Case]:
    """Every hostile case of issue 38 that a client can send over HTTP (images made once)."""
    grey, tiff, rgba, palette = sixteen_bit_png(), float_tiff(), rgba_png(), palette_png()
    refused = frozenset({413, 415, 422, 503})
    decodable = sixteen_bit_png(worst_decodable_side(DECODE_BUDGET))
    big = 320 * 1024 * 1024
    return [
        Case("16-bit 6300x6300 PNG (75 KB)",
             lambda u: post_files(u, "/predict", "file", [("grey.png", grey)]), refused),
        Case("the worst decodable 16-bit PNG",
             lambda u: post_files(u, "/predict", "file", [("grey.png", decodable)]),
             frozenset({200, 503})),
        Case("float TIFF 6300x6300",
             lambda u: post_files(u, "/predict", "file", [("f.tiff", tiff)]), refused),
        Case("transparent RGBA PNG 6300x6300",
             lambda u: post_files(u, "/predict", "file", [("a.png", rgba)]), refused),
        Case("transparent palette PNG 6300x6300",
             lambda u: post_files(u, "/predict", "file", [("p.png", palette)]), refused),
        Case("batch of eight 16-bit 6300x6300 PNGs",  # 200: each file an error entry
             lambda u: post_files(u, "/predict/batch", "files", [(f"{i}.png", grey) for i in range(8)]),
             refused | {200}),
        Case("batch of eight of the worst decodable",
             lambda u: post_files(u, "/predict/batch", "files", [(f"{i}.png", decodable) for i in range(8)]),
             frozenset({200, 503})),
        Case("batch declaring 320 MB",
             lambda u: raw(u, upload_head("/predict/batch", big)), frozenset({413})),
        Case("Content-Length longer than the body",
             lambda u: raw(u, upload_head("/predict", 100_000) + f"--{BOUNDARY}\r\n".encode()),
             frozenset({408})),
        Case("half-sent headers", lambda u: raw(u, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le"),
             frozenset({408})),
        Case("idle connection", lambda u: raw(u, b""), frozenset({408})),
        Case("client gone mid-upload",
             lambda u: raw(u, upload_head("/predict", 500_000) + b"x" * 20_000, close_after=0.2),
             frozenset({-1})),
    ]  # fmt: skip


def memory_kib(pid: int, key: str = "VmHWM") -> int:
    """A process's memory figure from /proc (VmHWM: its peak resident set; VmRSS: now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak(pid: int) -> None:
    """Make VmHWM start again from the present resident set (Linux: clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def memory_cgroup(limit_bytes: int, name: str) -> Path | None:
    """A cgroup (v1 or v2) with a memory limit that a server can be moved into, if allowed here."""
    for base in (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")):
        try:
            own = next(
                line.split(":", 2)[2]
                for line in Path("/proc/self/cgroup").read_text().splitlines()
                if line.split(":", 2)[1] in ("memory", "")
            )
            group = base / own.lstrip("/") / name
            group.mkdir(exist_ok=True)
            limit = group / ("memory.limit_in_bytes" if base.name == "memory" else "memory.max")
            limit.write_text(str(limit_bytes))
            return group
        except (OSError, StopIteration):
            continue
    return None


def move_into(group: Path, pid: int) -> None:
    """Put process ``pid`` into ``group``."""
    (group / "cgroup.procs").write_text(str(pid))


def remove_cgroup(group: Path) -> None:
    """Remove a cgroup made by :func:`memory_cgroup` once its processes are gone."""
    for _ in range(50):
        try:
            os.rmdir(group)
            return
        except OSError:
            time.sleep(0.1)


@dataclass
class Storm:
    """What :func:`storm` saw: each hostile case's status, normal photos', /healthz's times."""

    hostile: list[tuple[Case, int]]
    four_at_once: list[int]
    normal: list[int]
    health_s: list[float]

    def problems(self) -> list[str]:
        """Every way the server failed the storm (empty: it held)."""
        found = [f"{c.name}: {s}" for c, s in self.hostile if s not in c.fair]
        found += [f"four worst at once: {s}" for s in self.four_at_once if s not in (200, 503)]
        if not self.normal or any(s != 200 for s in self.normal):
            found.append(f"normal photos: {sorted(set(self.normal))}")
        if not self.health_s or max(self.health_s) >= 1.0:
            found.append(f"/healthz slowest {max(self.health_s, default=float('inf')):.2f} s")
        return found


def storm(url: str, idle_connections: int = 100) -> Storm:
    """Every hostile case twice, four of the worst decodable at once, and a slowloris of
    ``idle_connections``, while two clients send phone photos and one asks /healthz every 200 ms."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    stop = threading.Event()
    normal: list[int] = []
    health: list[float] = []
    photo = phone_photo()

    def normal_client() -> None:
        while not stop.is_set():
            normal.append(post_files(url, "/predict", "file", [("car.jpg", photo)]))

    def health_client() -> None:
        while not stop.wait(0.2):
            started = time.monotonic()
            try:
                ok = httpx.get(url + "/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                ok = False
            health.append(time.monotonic() - started if ok else float("inf"))

    background = [threading.Thread(target=normal_client) for _ in range(2)]
    background.append(threading.Thread(target=health_client))
    idle: list[socket.socket] = []
    try:
        for thread in background:
            thread.start()
        for _ in range(idle_connections):
            idle.append(socket.create_connection(("127.0.0.1", _port(url))))
        hostile = cases() * 2
        worst = sixteen_bit_png(worst_decodable_side(DECODE_BUDGET))
        with ThreadPoolExecutor(max_workers=len(hostile) + 4) as pool:
            sent = [(c, pool.submit(c.send, url)) for c in hostile]
            four = [
                pool.submit(post_files, url, "/predict", "file", [("g.png", worst)])
                for _ in range(4)
            ]
            got = [(c, f.result()) for c, f in sent]
            four_at_once = [f.result() for f in four]
        time.sleep(1)  # normal traffic goes on after the storm
    finally:
        stop.set()
        for thread in background:
            thread.join()
        for sock in idle:
            sock.close()
    return Storm(got, four_at_once, normal, health)
