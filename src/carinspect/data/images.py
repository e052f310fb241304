"""Decoding and validating one image file: the single place that turns bytes into RGB pixels.

Ingest uses it for every source file and serving for every upload, so both see the same image:
full decode (truncation is an error, not grey pixels), EXIF orientation applied, every colour mode
converted to 8-bit RGB, and size limits checked *before* pixels are allocated.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from carinspect.errors import InputError

SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_WHITE = (255, 255, 255)


class ImageError(InputError):
    """An image that cannot be used; ``reason`` is a short, stable code for reports."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageLimits:
    """Bounds an image must satisfy to be accepted."""

    min_side: int = 1
    max_pixels: int = 50_000_000
    max_bytes: int = 50 * 1024 * 1024


@dataclass(frozen=True)
class DecodedImage:
    """An accepted image, already oriented and converted to RGB."""

    image: Image.Image
    format: str
    mode: str
    width: int
    height: int


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if mode in _SIXTEEN_BIT_MODES or (mode == "I" and peak > 255):
            arr = arr / 257.0
        elif mode == "F" and peak <= 1.0:
            arr = arr * 255.0
        gray = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
        return gray.convert("RGB")
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> DecodedImage:
    """Fully decode ``data`` into an oriented RGB image or raise :class:`ImageError`.

    Reasons: ``empty``, ``too_large_file``, ``not_an_image``, ``unsupported_format``,
    ``pixel_bomb``, ``corrupt`` (truncated or undecodable pixels), ``too_small``.
    """
    if len(data) == 0:
        raise ImageError("empty", "file has zero bytes")
    if len(data) > limits.max_bytes:
        raise ImageError(
            "too_large_file", f"{len(data)} bytes exceeds max_bytes={limits.max_bytes}"
        )
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageError("pixel_bomb", str(err)) from None
    except UnidentifiedImageError:
        raise ImageError("not_an_image", "content is not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError("corrupt", f"header cannot be read: {err}") from None
    fmt = img.format or "unknown"
    if fmt not in SUPPORTED_FORMATS:
        raise ImageError("unsupported_format", f"{fmt} is not one of {sorted(SUPPORTED_FORMATS)}")
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ImageError(
            "pixel_bomb",
            f"{width}x{height} = {width * height} pixels exceeds max_pixels={limits.max_pixels}",
        )
    mode = img.mode
    try:
        img.load()
    except Image.DecompressionBombError as err:
        raise ImageError("pixel_bomb", str(err)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageError("corrupt", f"pixels cannot be decoded: {err}") from None
    # Unreadable EXIF: keep the stored orientation rather than drop a good image.
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, SyntaxError):
        img = ImageOps.exif_transpose(img) or img
    rgb = to_rgb(img)
    if min(rgb.size) < limits.min_side:
        raise ImageError(
            "too_small", f"{rgb.width}x{rgb.height} has a side below min_side={limits.min_side}"
        )
    return DecodedImage(image=rgb, format=fmt, mode=mode, width=rgb.width, height=rgb.height)


def resize_short_side(img: Image.Image, short_side: int) -> Image.Image:
    """Resize so the shorter side is ``short_side`` (never upscales), keeping the aspect ratio."""
    w, h = img.size
    scale = short_side / min(w, h)
    if scale >= 1.0:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def grayscale_spread(img: Image.Image) -> float:
    """Mean per-pixel spread between RGB channels on a 64 px thumbnail (0 for a gray image)."""
    thumb = img.copy()
    thumb.thumbnail((64, 64))
    arr = np.asarray(thumb, dtype=np.int16)
    return float((arr.max(axis=2) - arr.min(axis=2)).mean())
