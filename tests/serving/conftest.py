"""A real `carinspect serve` process per test module, and the images it is fed."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import Server, start_server, stop_process


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
