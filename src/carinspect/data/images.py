"""Decoding and validating one image file: the single place that turns bytes into RGB pixels.

Ingest uses it for every source file and serving for every upload, so both see the same image:
full decode with the integrity checks of :mod:`carinspect.data.integrity` (a cut or corrupt file
is an error, not grey pixels), EXIF orientation applied, every colour mode converted to 8-bit
RGB, size limits checked *before* pixels are allocated, and, given the short side the model's
data is kept at (``ingest.short_side``), the image reduced to it.

Reduction starts in the decoder: libjpeg decodes a JPEG directly at 1/2, 1/4 or 1/8 scale (its
DCT scaling, through simplejpeg in strict mode), at the largest reduction whose result still has
a short side of at least the target; the rest is a bicubic resize. For a 4000x3000 phone photo and a
128 px target that is a 500x375 decode instead of 12 megapixels, several times faster. Both
ingest and serving reduce through this one function, so the pixels a model is trained on and the
pixels it is served are the same.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from carinspect.data import integrity
from carinspect.data.integrity import ImageError

__all__ = [
    "DecodedImage",
    "ImageError",
    "ImageLimits",
    "decode_image",
    "resize_short_side",
    "to_rgb",
]

SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_WHITE = (255, 255, 255)


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
    width: int  # of the file, oriented: before any reduction
    height: int
    reduced: int = 1  # the JPEG decoder's scale-down factor (1, 2, 4 or 8)


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


def decode_image(
    data: bytes, limits: ImageLimits = ImageLimits(), short_side: int | None = None
) -> DecodedImage:
    """Fully decode ``data`` into an oriented RGB image or raise :class:`ImageError`.

    With ``short_side``, the image comes back with its shorter side reduced to that (never
    upscaled; JPEG decoded at a reduced scale first, see the module docstring). ``width`` and
    ``height`` are always the file's own, oriented size.

    Reasons: ``empty``, ``too_large_file``, ``not_an_image``, ``unsupported_format``,
    ``pixel_bomb``, ``truncated`` (the data ends before the image does), ``corrupt`` (bad
    checksums, undecodable or inconsistent pixel data), ``too_small``.
    """
    if len(data) == 0:
        raise ImageError("empty", "file has zero bytes")
    if len(data) > limits.max_bytes:
        raise ImageError(
            "too_large_file", f"{len(data)} bytes exceeds max_bytes={limits.max_bytes}"
        )
    announced = integrity.sniff(data)
    layout = integrity.check_structure(announced, data)
    img = _open(data, announced)
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
    if min(width, height) < limits.min_side:
        raise ImageError(
            "too_small", f"{width}x{height} has a side below min_side={limits.min_side}"
        )
    if fmt == "PNG":
        if layout is None:  # Pillow took it for a PNG without the PNG signature
            raise ImageError("corrupt", "PNG content without the PNG signature")
        integrity.check_png_pixels(layout)
    elif fmt == "TIFF":
        integrity.check_tiff_strips(img, len(data))
    reduced = 1
    if fmt in ("JPEG", "MPO"):
        reduced = integrity.jpeg_scale(width, height, short_side)
        if mode in ("RGB", "L"):  # YCbCr or grey: libjpeg converts, one strict decode
            pixels = integrity.decode_jpeg(data, width, height, reduced, "RGB")
            decoded, turned = _oriented(img, Image.fromarray(pixels))
        else:  # CMYK/YCCK (Adobe's inverted ink included): Pillow converts, libjpeg checks
            integrity.decode_jpeg(data, width, height, reduced, "CMYK")
            img.draft(None, (width // reduced, height // reduced))
            decoded, turned = _oriented(img, _load(img))
    else:
        decoded, turned = _oriented(img, _load(img))
    if turned:  # rotated by a quarter turn: the file's size, oriented
        width, height = height, width
    try:
        rgb = to_rgb(decoded)
    except Exception as err:
        raise ImageError("corrupt", f"{mode} pixels cannot be converted to RGB: {err!r}") from None
    if short_side is not None:
        # sized from the file's own size, so the aspect ratio is the one a full decode keeps
        # (a 1/8 decode of 2000x1500 is 250x188: resized from that it would be 170, not 171 wide)
        rgb = resize_short_side(rgb, short_side, of_size=(width, height))
    return DecodedImage(rgb, fmt, mode, width, height, reduced)


def _open(data: bytes, announced: str | None) -> Image.Image:
    """Open the header; a file whose magic names a format but does not open is broken, not alien."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageError("pixel_bomb", str(err)) from None
    except UnidentifiedImageError:
        if announced is None:
            raise ImageError("not_an_image", "content is not a recognised image format") from None
        why = _plugin_error(announced, data)
        raise ImageError(
            integrity.reason_of(why), f"{announced} header cannot be read: {why}"
        ) from None
    except Exception as err:  # a plugin's error on hostile input, whatever its type
        raise ImageError(integrity.reason_of(err), f"header cannot be read: {err!r}") from None


def _plugin_error(fmt: str, data: bytes) -> BaseException:
    """Why the plugin of ``fmt`` refuses ``data`` (Image.open only says no plugin took it)."""
    Image.init()
    factory = Image.OPEN[fmt][0]
    try:
        factory(io.BytesIO(data), "")
    except Exception as err:  # whatever the plugin raised is the reason given
        return err
    return OSError("the file does not open")


def _load(img: Image.Image) -> Image.Image:
    """Decode the pixels Pillow holds back; its errors as reasons.

    Any exception counts: on hostile input Pillow's plugins raise more than OSError (a TIFF
    whose strip offsets are doubles raised TypeError from a seek; the fuzzer found it).
    """
    try:
        img.load()
    except Image.DecompressionBombError as err:
        raise ImageError("pixel_bomb", str(err)) from None
    except Exception as err:
        raise ImageError(integrity.reason_of(err), f"pixels cannot be decoded: {err!r}") from None
    return img


_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _oriented(header: Image.Image, pixels: Image.Image) -> tuple[Image.Image, bool]:
    """``pixels`` turned as the EXIF orientation of ``header`` says (unreadable EXIF: as stored).

    Also whether that was a quarter turn (width and height swap).
    """
    orientation = 1
    with contextlib.suppress(Exception):  # EXIF is metadata: broken EXIF never costs the image
        orientation = int(header.getexif().get(0x0112, 1))
    method = _ORIENTATION.get(orientation)
    if method is None:
        return pixels, False
    return pixels.transpose(method), orientation >= 5


def _short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """The size with the shorter side reduced to ``short_side`` (never enlarged)."""
    scale = short_side / min(width, height)
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_short_side(
    img: Image.Image, short_side: int, of_size: tuple[int, int] | None = None
) -> Image.Image:
    """Resize so the shorter side is ``short_side`` (never upscales), keeping the aspect ratio.

    ``of_size``: the size the aspect ratio is taken from when ``img`` is a reduced decode of it.
    """
    size = _short_side_size(*(of_size or img.size), short_side)
    if size == img.size:
        return img
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def grayscale_spread(img: Image.Image) -> float:
    """Mean per-pixel spread between RGB channels on a 64 px thumbnail (0 for a gray image)."""
    thumb = img.copy()
    thumb.thumbnail((64, 64))
    arr = np.asarray(thumb, dtype=np.int16)
    return float((arr.max(axis=2) - arr.min(axis=2)).mean())
