"""Decoding within a known memory bound: decode_cost against the peak RSS of real decodes.

Each case is decoded in a fresh process that only reads the file, so its high-water mark
(VmHWM, reset after the header is read) is the decode's own. The 16-bit PNG is the one a
hostile-client probe found costing ~1 GB at 6300x6300 (issue 38): the float64 conversion ran
on every pixel before the image was reduced.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carinspect.data.decoding.images import (
    ImageError,
    ImageLimits,
    decode_image,
    open_image,
    to_rgb,
)

SIDE = 3000  # 9 M pixels: big enough to dwarf the interpreter's noise, quick to write

_MEASURE = """
import sys
from carinspect.data.decoding.images import ImageLimits, open_image
def kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
data = open(sys.argv[1], "rb").read()
short = None if sys.argv[2] == "none" else int(sys.argv[2])
opened = open_image(data, ImageLimits(), short)
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
base = kib("VmRSS")
opened.decode()
print(opened.cost, (kib("VmHWM") - base) * 1024)
"""


def _ramp(mode: str, width: int, height: int) -> Image.Image:
    """An image of ``mode`` with every pixel set (untouched zero pages would not count)."""
    y, x = np.indices((height, width))
    ramp = ((x + y) % 251 + 1).astype(np.uint8)
    if mode == "I;16":
        return Image.fromarray(ramp.astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(ramp.astype(np.int32) * 100, "I")
    if mode == "F":
        return Image.fromarray(ramp.astype(np.float32) / 255, "F")
    if mode in ("L", "1"):
        return Image.fromarray(ramp).convert(mode)
    if mode == "P":
        return Image.fromarray(ramp).convert("P")
    channels = {"RGB": 3, "RGBA": 4, "LA": 2, "CMYK": 4}[mode]
    return Image.fromarray(np.repeat(ramp[..., None], channels, axis=2), mode)


CASES = [
    ("PNG", "I;16"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "LA"), ("PNG", "RGB"), ("PNG", "1"),
    ("TIFF", "F"), ("TIFF", "I"), ("TIFF", "CMYK"), ("WEBP", "RGBA"), ("GIF", "P"),
    ("JPEG", "RGB"), ("JPEG", "CMYK"), ("BMP", "RGB"),
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "mode"), CASES, ids=[f"{f}-{m}" for f, m in CASES])
@pytest.mark.parametrize("short_side", [128, None], ids=["reduced", "full"])
def test_decode_stays_within_its_cost(
    tmp_path: Path, fmt: str, mode: str, short_side: int | None
) -> None:
    image = _ramp(mode, SIDE, SIDE * 3 // 4)
    options: dict[str, object] = {"transparency": 0} if mode == "P" else {}
    if fmt == "TIFF":
        options["compression"] = "tiff_adobe_deflate"
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt, **options)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), str(short_side or "none")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    cost, peak = (int(v) for v in done.stdout.split())
    assert peak <= cost, f"{fmt} {mode}: peak {peak / 2**20:.0f} MiB > cost {cost / 2**20:.0f}"
    assert peak > 0.25 * cost or cost < 16 * 2**20, "the bound is far too loose to be useful"


def test_sixteen_bit_is_refused_over_the_budget_and_decodes_under_it() -> None:
    image = _ramp("I;16", 2000, 1500)
    buffer = __import__("io").BytesIO()
    image.save(buffer, "PNG")
    data = buffer.getvalue()
    need = open_image(data, ImageLimits(), 128).cost
    with pytest.raises(ImageError) as refused:
        decode_image(data, ImageLimits(max_decode_bytes=need - 1), 128)
    assert refused.value.reason == "decode_budget"
    assert "2000x1500 I;16 PNG" in str(refused.value) and "MiB" in str(refused.value)
    assert decode_image(data, ImageLimits(max_decode_bytes=need), 128).image.size == (171, 128)


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_strip_conversion_gives_the_whole_array_values(mode: str) -> None:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (700, 900), dtype=np.uint16))
    elif mode == "I":
        image = Image.fromarray(rng.integers(-50, 40_000, (700, 900), dtype=np.int32), "I")
    else:
        image = Image.fromarray(rng.random((700, 900), dtype=np.float32) * 1.0, "F")
    arr = np.asarray(image, dtype=np.float64)  # the old conversion: the whole array in float64
    peak = float(arr.max())
    if mode == "I;16" or (mode == "I" and peak > 255):
        arr = arr / 257.0
    elif mode == "F" and peak <= 1.0:
        arr = arr * 255.0
    expected = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    got = np.asarray(to_rgb(image))
    assert got.shape == (700, 900, 3)
    np.testing.assert_array_equal(got[..., 0], expected)


def test_png_exif_orientation_is_read_without_decoding_the_pixels() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # a quarter turn
    buffer = __import__("io").BytesIO()
    _ramp("RGB", 400, 200).save(buffer, "PNG", exif=exif.tobytes())
    opened = open_image(buffer.getvalue(), ImageLimits(), 100)
    assert opened.header.tile, "the header was decoded before the budget could be checked"
    assert (opened.width, opened.height) == (200, 400)
    assert opened.decode().image.size == (100, 200)
