"""A real `carinspect serve` process per test module, and the images it is fed."""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import VENV_BIN, free_port, stop_process


@dataclass
class Server:
    """A started server: its base URL and process."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def rss_kb(self) -> int:
        """Resident memory of the server process (Linux)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def start_server(
    tmp: Path, env: dict[str, str], ready: bool = True, timeout: float = 60.0
) -> Server:
    """`carinspect serve` on a free port, waited for (ready, or merely alive)."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    proc = subprocess.Popen(
        [str(VENV_BIN / "carinspect"), "serve", "--port", str(port)],
        cwd=tmp,
        env={**os.environ, "MODEL_CACHE_DIR": str(tmp / "model-cache"), **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    path = "/readyz" if ready else "/healthz"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return Server(url, proc, log)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_process(proc)
            raise TimeoutError(f"server not answering {path}: {log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture()
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers for one test; all are stopped by pid afterwards."""
    started: list[Server] = []

    def _start(ready: bool = True, **env: str) -> Server:
        server = start_server(tmp_path, env, ready=ready)
        started.append(server)
        return server

    yield _start
    for server in started:
        stop_process(server.proc)


def image_bytes(
    fmt: str = "JPEG", mode: str = "RGB", size: tuple[int, int] = (64, 48), **kw: object
) -> bytes:
    """A small generated image in the given format and mode."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    img = rgb.convert(mode) if mode != "RGB" else rgb
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstream: dict[str, Path]) -> Iterator[Server]:
    """One server on the upstream export folder, shared by a module's tests."""
    server = start_server(tmp_path_factory.mktemp("served"), {"MODEL_URI": str(upstream["export"])})
    yield server
    stop_process(server.proc)
