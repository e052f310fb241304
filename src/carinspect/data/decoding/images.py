"""Decoding and validating one image file: the single place that turns bytes into RGB pixels.

Ingest uses it for every source file and serving for every upload, so both see the same image:
full decode with the integrity checks of :mod:`carinspect.data.decoding.integrity` (a cut or corrupt file
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

from carinspect.data.decoding import integrity
from carinspect.data.decoding.integrity import ImageError

__all__ = [
    "DecodedImage",
    "ImageError",
    "ImageLimits",
    "OpenedImage",
    "decode_cost",
    "decode_image",
    "open_image",
    "resize_short_side",
    "to_rgb",
]

SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ImageLimits:
    """Bounds an image must satisfy to be accepted.

    ``max_decode_bytes``: the most memory one decode may need at its peak, as
    :func:`decode_cost` works it out from the header before any pixel is allocated (None: no
    bound). It makes a small file that decodes huge (a 75 KB 16-bit PNG of 40 M pixels) a
    refusal with a reason, not a gigabyte.
    """

    min_side: int = 1
    max_pixels: int = 50_000_000
    max_bytes: int = 50 * 1024 * 1024
    max_decode_bytes: int | None = None


@dataclass(frozen=True)
class DecodedImage:
    """An accepted image, already oriented and converted to RGB."""

    image: Image.Image
    format: str
    mode: str
    width: int  # of the file, oriented: before any reduction
    height: int
    reduced: int = 1  # the JPEG decoder's scale-down factor (1, 2, 4 or 8)


# Bytes per pixel of Pillow's storage of a mode (every 3- or 4-channel mode is kept in 4).
_STORED = {"1": 1, "L": 1, "P": 1, **dict.fromkeys(_SIXTEEN_BIT_MODES, 2)}
# Bytes per source pixel held at full resolution at the peak of the conversion to RGB, the
# decoded pixels included (see _rgb_at): 16-bit, 32-bit and float become 8-bit grey a strip at
# a time; alpha is painted onto a white RGB canvas through a one-byte mask; a palette with
# transparency is expanded to RGBA first.
_HELD = {
    "1": 2, "L": 1, "P": 1 + 4 + 4 + 1, "PA": 1 + 4 + 4 + 1,
    "I": 4 + 1, "F": 4 + 1, **dict.fromkeys(_SIXTEEN_BIT_MODES, 2 + 1),
    "RGB": 4, "RGBA": 4 + 4 + 1, "RGBa": 4 + 4 + 4 + 1, "LA": 4 + 4 + 4 + 1,
    "La": 4 + 4 + 4 + 1,
}  # fmt: skip
_HELD_OTHER = 4 + 4  # CMYK, YCbCr, LAB, HSV: one conversion to RGB
# Decoders that hold a whole frame of their own beside Pillow's (libwebp's buffer and the
# bytes Pillow copies it from; libtiff's strip buffer when a strip is the whole image).
_DECODER_FRAMES = {"WEBP": 3, "TIFF": 1}
# Copies of the result (RGB, 4 bytes a pixel) at the peak. Reduced: the resize's reduced
# intermediate (up to 16x the result with a reducing gap of 3), its passes and the transpose.
# At the file's own size, the result is counted in _HELD: only the transpose is extra.
_OUT_COPIES = {True: 20, False: 1}
_MARGIN = 1.25  # allocator slack and the decoders' own buffers (row, palette, zlib window)
_STRIP_PIXELS = 1 << 20  # 16-bit and float pixels become 8-bit a megapixel at a time


def decode_cost(
    fmt: str, mode: str, size: tuple[int, int], out: tuple[int, int], reduced: int = 1
) -> int:
    """An upper bound of the memory (bytes) decoding this image to RGB needs at its peak.

    ``size``: the file's stored size; ``out``: the size it comes back at; ``reduced``: libjpeg's
    scale-down. Checked against the peak RSS of real decodes of every mode and format in
    tests/data/test_decode_memory.py.
    """
    width, height = -(-size[0] // reduced), -(-size[1] // reduced)
    pixels = width * height
    held = _HELD.get(mode, _HELD_OTHER)
    if fmt in ("JPEG", "MPO") and mode in ("RGB", "L"):
        held = 3 + 4  # libjpeg's RGB array and the image made from it
    frames = _DECODER_FRAMES.get(fmt, 0) * _STORED.get(mode, 4)
    strips = _STRIP_PIXELS * 16 if mode in ("I", "F") or mode in _SIXTEEN_BIT_MODES else 0
    copies = _OUT_COPIES[out[0] * out[1] < pixels]
    exact = pixels * (held + frames) + out[0] * out[1] * 4 * copies + strips
    return int(exact * _MARGIN)


def _to_gray8(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float pixels as 8-bit grey, a strip of rows at a time.

    16-bit (and ``I`` data above 255) are scaled by 1/257, float data within [0, 1] by 255, the
    rest rounded and clipped to [0, 255]: what converting the whole array to float64 gave,
    without the eight bytes per pixel (and three temporaries) that cost.
    """
    mode = img.mode
    _, high = img.getextrema()
    peak = float(high)  # type: ignore[arg-type]
    scale = 1.0
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and peak > 255):
        scale = 1 / 257
    elif mode == "F" and peak <= 1.0:
        scale = 255.0
    width, height = img.size
    out = np.empty((height, width), dtype=np.uint8)
    step = max(1, _STRIP_PIXELS // width)
    for top in range(0, height, step):
        strip = np.asarray(img.crop((0, top, width, min(height, top + step))))
        if mode in _SIXTEEN_BIT_MODES:  # exact in integers: (x + 128) // 257 == rint(x / 257)
            out[top : top + step] = (strip.astype(np.uint32) + 128) // 257
            continue
        rows = strip.astype(np.float64)
        if scale != 1.0:
            rows *= scale
        np.rint(rows, out=rows)
        np.clip(rows, 0, 255, out=rows)
        out[top : top + step] = rows
    return Image.fromarray(out)


def _on_white(img: Image.Image) -> Image.Image:
    """An RGBA or LA image painted onto white: one RGB canvas and a one-byte mask."""
    canvas = Image.new("RGB", img.size, _WHITE)
    canvas.paste(img.convert("RGB") if img.mode == "LA" else img, mask=img.getchannel("A"))
    return canvas


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    return _rgb_at(img, img.size)


def _rgb_at(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``img`` in 8-bit RGB at ``size`` (its own or smaller).

    Grey (and every mode that becomes grey) is resized first and made RGB after: the same
    pixels for three equal channels, at a third of the memory. Other modes are converted first.
    """
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        img = _to_gray8(img)
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if transparent else "RGB")
    if img.mode == "L":
        return _resized(img, size).convert("RGB")
    if img.mode in ("La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        img = _on_white(img)
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return _resized(img, size)


def _resized(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if size == img.size:
        return img
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


@dataclass(frozen=True)
class OpenedImage:
    """A file whose header, structure and limits passed, and what decoding it will cost.

    :func:`open_image` makes one and :meth:`decode` turns it into pixels; between the two, a
    server can wait for ``cost`` bytes of its memory budget.
    """

    data: bytes
    header: Image.Image
    format: str
    width: int  # oriented, as DecodedImage's
    height: int
    orientation: int
    reduced: int
    out: tuple[int, int]  # the oriented size it comes back at
    cost: int

    def decode(self) -> DecodedImage:
        """The pixels: decoded, made RGB at ``out`` in the stored orientation, then turned.

        Turning the small result instead of the decoded pixels saves a full-size copy.
        """
        img, fmt, mode = self.header, self.format, self.header.mode
        turned = self.orientation >= 5
        stored = (self.out[1], self.out[0]) if turned else self.out
        width, height = img.size
        if fmt in ("JPEG", "MPO") and mode in ("RGB", "L"):  # libjpeg converts: one strict decode
            pixels = integrity.decode_jpeg(self.data, width, height, self.reduced, "RGB")
            decoded = Image.fromarray(pixels)
            del pixels
        elif fmt in ("JPEG", "MPO"):  # CMYK/YCCK (Adobe's inverted ink): Pillow converts
            integrity.decode_jpeg(self.data, width, height, self.reduced, "CMYK")
            img.draft(None, (width // self.reduced, height // self.reduced))
            decoded = _load(img)
        else:
            decoded = _load(img)
        try:
            rgb = _rgb_at(decoded, stored)
        except Exception as err:
            raise ImageError(
                "corrupt", f"{mode} pixels cannot be converted to RGB: {err!r}"
            ) from None
        del decoded
        method = _ORIENTATION.get(self.orientation)
        if method is not None:
            rgb = rgb.transpose(method)
        return DecodedImage(rgb, fmt, mode, self.width, self.height, self.reduced)


def open_image(
    data: bytes, limits: ImageLimits = ImageLimits(), short_side: int | None = None
) -> OpenedImage:
    """Check ``data``'s header, structure and limits, allocating no pixels (see decode_image)."""
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
    reduced = integrity.jpeg_scale(width, height, short_side) if fmt in ("JPEG", "MPO") else 1
    orientation = _orientation(img, layout)
    if orientation >= 5:  # a quarter turn: the file's size, oriented
        width, height = height, width
    # sized from the file's own size, so the aspect ratio is the one a full decode keeps
    # (a 1/8 decode of 2000x1500 is 250x188: resized from that it would be 170, not 171 wide)
    out = (width, height) if short_side is None else _short_side_size(width, height, short_side)
    cost = decode_cost(fmt, img.mode, img.size, out, reduced)
    if limits.max_decode_bytes is not None and cost > limits.max_decode_bytes:
        raise ImageError(
            "decode_budget",
            f"a {width}x{height} {img.mode} {fmt} needs ~{cost / 2**20:.0f} MiB to decode, over "
            f"the {limits.max_decode_bytes / 2**20:.0f} MiB one image may use",
        )
    return OpenedImage(data, img, fmt, width, height, orientation, reduced, out, cost)


def decode_image(
    data: bytes, limits: ImageLimits = ImageLimits(), short_side: int | None = None
) -> DecodedImage:
    """Fully decode ``data`` into an oriented RGB image or raise :class:`ImageError`.

    With ``short_side``, the image comes back with its shorter side reduced to that (never
    upscaled; JPEG decoded at a reduced scale first, see the module docstring). ``width`` and
    ``height`` are always the file's own, oriented size.

    Reasons: ``empty``, ``too_large_file``, ``not_an_image``, ``unsupported_format``,
    ``pixel_bomb``, ``decode_budget`` (decoding would need more than ``max_decode_bytes``),
    ``truncated`` (the data ends before the image does), ``corrupt`` (bad checksums,
    undecodable or inconsistent pixel data), ``too_small``.
    """
    return open_image(data, limits, short_side).decode()


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


def _orientation(header: Image.Image, png: integrity.PngLayout | None) -> int:
    """The EXIF orientation of ``header`` (1 when absent, unknown or unreadable).

    A PNG's comes from the eXIf chunk its layout found: Pillow's ``getexif`` on a PNG decodes
    every pixel first, in case the chunk follows the image data.
    """
    with contextlib.suppress(Exception):  # EXIF is metadata: broken EXIF never costs the image
        if png is not None:
            exif = Image.Exif()
            if png.exif is not None:
                exif.load(png.exif)
        else:
            exif = header.getexif()
        orientation = int(exif.get(0x0112, 1))
        return orientation if orientation in _ORIENTATION else 1
    return 1


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
