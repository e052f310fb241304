"""Integrity checks of an image file's structure and pixel data, per format.

Pillow decodes leniently: a PNG whose compressed data ends after half its rows, a JPEG cut in its
scan with an end marker appended, a GIF or an animated PNG cut in a later frame all open and
"decode", the missing pixels grey or black. A training image or an answer built on such pixels is
wrong without anyone knowing. The checks here refuse those files with a reason:

- ``truncated``: the data ends before the image does (a cut file, a chunk or strip that runs past
  the end, compressed data that stops before the last row);
- ``corrupt``: the data is there but inconsistent (a checksum that does not match, an entropy-coded
  segment libjpeg had to guess through, more pixel data than the header declares, a palette image
  without a palette).

They are cheap beside decoding: a walk over chunk or block headers and a CRC32 over the bytes
(PNG, GIF, WebP), one extra inflate of a PNG's pixel data (to count its rows), and for JPEG the
decode itself, by libjpeg-turbo through simplejpeg in strict mode (libjpeg's "premature end" and
"corrupt data" warnings become errors). :mod:`carinspect.data.decoding.images` calls them; ingest and
serving both decode through it.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image

from carinspect.errors import InputError

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
# Words in decoder errors that mean the data ran out (anything else is ``corrupt``).
_CUT_WORDS = ("truncat", "premature end", "not enough data", "unexpected end", "end of file",
              "requires a buffer", "buffer is not large enough")  # fmt: skip
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))  # fmt: skip
_INFLATE_STEP = 1 << 20  # inflate a MiB at a time: counting rows never holds the whole image


class ImageError(InputError):
    """An image that cannot be used; ``reason`` is a short, stable code for reports."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def truncated(detail: str) -> ImageError:
    """The error for data that ends before the image does."""
    return ImageError("truncated", detail)


def corrupt(detail: str) -> ImageError:
    """The error for data that is there but inconsistent."""
    return ImageError("corrupt", detail)


def reason_of(err: BaseException) -> str:
    """``truncated`` when a decoder's error says the data ran out, else ``corrupt``."""
    text = str(err).lower()
    if isinstance(err, EOFError) or any(word in text for word in _CUT_WORDS):
        return "truncated"
    return "corrupt"


def sniff(data: bytes) -> str | None:
    """The format the file's first bytes announce, or None (Pillow may still know it).

    A file of three bytes or more that is the start of a signature announces that format too
    (a PNG cut inside its 8-byte signature is a cut PNG, not an unknown file).
    """
    for magic, fmt in _MAGIC:
        if data.startswith(magic) or (len(data) >= 3 and magic.startswith(data)):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def extension(data: bytes) -> str:
    """A file extension for ``data`` by its first bytes (logs are read content-sniffed anyway)."""
    fmt = sniff(data)
    return {"JPEG": ".jpg", None: ".img"}.get(fmt, f".{(fmt or '').lower()}")


def check_structure(fmt: str | None, data: bytes) -> PngLayout | None:
    """Walk the container: PNG chunks (with CRCs), GIF blocks, WebP's RIFF, and so on.

    Also JPEG's header segments and TIFF's first directory. Cheap: no pixel data is decoded.
    A PNG's layout comes back for :func:`check_png_pixels`.
    """
    if fmt == "PNG":
        return png_layout(data)
    if fmt == "GIF":
        _check_gif(data)
    elif fmt == "WEBP":
        _check_riff(data)
    elif fmt == "JPEG":
        _jpeg_header_end(data)
    elif fmt == "TIFF":
        _check_tiff_directory(data)
    return None


# --- PNG ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PngLayout:
    """What a PNG's chunks say about its first image."""

    width: int
    height: int
    bit_depth: int
    color_type: int
    interlaced: bool
    idat: tuple[memoryview, ...]
    exif: bytes | None = None  # the eXIf chunk (Pillow decodes every pixel to look for it)

    def raw_size(self) -> int:
        """Bytes of filtered scanlines the IDAT stream must inflate to."""
        bits = _PNG_CHANNELS[self.color_type] * self.bit_depth
        if not self.interlaced:
            return self.height * (1 + (self.width * bits + 7) // 8)
        total = 0
        for x0, y0, dx, dy in _ADAM7:
            cols = (self.width - x0 + dx - 1) // dx
            rows = (self.height - y0 + dy - 1) // dy
            if cols > 0 and rows > 0:
                total += rows * (1 + (cols * bits + 7) // 8)
        return total


def _png_chunks(data: bytes) -> Iterator[tuple[int, bytes, memoryview]]:
    """(offset, type, body) of every chunk up to IEND; CRCs checked on the way."""
    view = memoryview(data)
    pos, size = 8, len(data)
    if size < 8:
        raise truncated(f"{size} bytes: the file ends inside the PNG signature")
    while True:
        if pos + 8 > size:
            raise truncated(f"the file ends at byte {size}, inside a chunk header (no IEND)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        if not kind.isalpha():
            raise corrupt(f"byte {pos}: {kind!r} is not a chunk type")
        name = kind.decode("ascii")
        end = pos + 12 + length
        if length > 0x7FFFFFFF:
            raise corrupt(f"chunk {name} at byte {pos} declares {length} bytes")
        if end > size:
            raise truncated(f"chunk {name} at byte {pos} needs {end} bytes, the file has {size}")
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            raise corrupt(f"chunk {name} at byte {pos}: CRC mismatch")
        yield pos, kind, view[pos + 8 : end - 4]
        if kind == b"IEND":
            return
        pos = end


def png_layout(data: bytes) -> PngLayout:
    """Check every chunk (complete, CRC, order) and return what the pixel check needs."""
    header: tuple[int, int, int, int, int] | None = None
    idat: list[memoryview] = []
    palette = False
    idat_done = False
    exif: bytes | None = None
    for pos, kind, body in _png_chunks(data):
        if header is None:
            if kind != b"IHDR" or len(body) != 13:
                raise corrupt("the first chunk is not a 13-byte IHDR")
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if width == 0 or height == 0 or width > 0x7FFFFFFF or height > 0x7FFFFFFF:
                raise corrupt(f"IHDR declares {width}x{height} pixels")
            if depth not in _PNG_DEPTHS.get(color, ()):
                raise corrupt(f"IHDR: colour type {color} with bit depth {depth} is not PNG")
            if interlace > 1:
                raise corrupt(f"IHDR: unknown interlace method {interlace}")
            header = (width, height, depth, color, interlace)
        elif kind == b"PLTE":
            palette = True
        elif kind == b"eXIf":
            exif = bytes(body)
        elif kind == b"IDAT":
            if idat_done:
                raise corrupt(f"IDAT at byte {pos} after another chunk ended the image data")
            idat.append(body)
        elif idat:
            idat_done = True
    if header is None:
        raise truncated("no IHDR chunk")
    if not idat:
        raise truncated("no IDAT chunk: the file holds no pixel data")
    width, height, depth, color, interlace = header
    if color == 3 and not palette:
        raise corrupt("a palette image (colour type 3) without a PLTE chunk")
    return PngLayout(width, height, depth, color, bool(interlace), tuple(idat), exif)


def check_png_pixels(layout: PngLayout) -> None:
    """Inflate the IDAT stream once, counting bytes: every declared row must be there.

    Pillow stops decoding where the compressed stream ends and leaves the remaining rows at
    zero; this catches a stream that is cut (``truncated``), complete but short (``truncated``,
    with the rows it holds) or longer than the rows declared (``corrupt``).
    """
    expected = layout.raw_size()
    inflater = zlib.decompressobj()
    got = 0
    try:
        for part in layout.idat:
            pending: bytes | memoryview = part
            while pending and not inflater.eof:
                got += len(inflater.decompress(pending, _INFLATE_STEP))
                pending = inflater.unconsumed_tail
                if got > expected:
                    raise corrupt(f"IDAT inflates past the {expected} bytes of its declared rows")
    except zlib.error as err:
        raise corrupt(f"IDAT cannot be inflated: {err}") from None
    if not inflater.eof:
        raise truncated(f"the IDAT stream stops after {got} of {expected} bytes")
    if got < expected:
        if layout.interlaced:
            raise truncated(f"IDAT holds {got} of the {expected} bytes of the interlaced passes")
        row = expected // layout.height
        raise truncated(f"IDAT holds {got // row} of the {layout.height} rows the header declares")


# --- GIF and WebP ---------------------------------------------------------------------------


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    """The offset after a run of GIF data sub-blocks (ended by a zero-length block)."""
    size = len(data)
    while True:
        if pos >= size:
            raise truncated(f"the file ends at byte {size}, inside a block (no trailer)")
        length = data[pos]
        pos += 1 + length
        if length == 0:
            return pos


def _check_gif(data: bytes) -> None:
    """Every extension and image block complete, up to the trailer (all frames)."""
    size = len(data)
    if size < 13:
        raise truncated(f"{size} bytes: the file ends inside the GIF header")
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while True:
        if pos >= size:
            raise truncated(f"the file ends at byte {size} before the GIF trailer")
        block = data[pos]
        if block == 0x3B:
            return
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image: descriptor, local colour table, LZW size, sub-blocks
            if pos + 10 > size:
                raise truncated(f"the file ends inside the image descriptor at byte {pos}")
            local = data[pos + 9]
            pos += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0) + 1
            pos = _skip_sub_blocks(data, pos)
        else:
            raise corrupt(f"byte {pos}: 0x{block:02X} is not a GIF block")


def _check_riff(data: bytes) -> None:
    """The RIFF container of a WebP: its declared size and every chunk inside it complete."""
    size = len(data)
    if size < 12:
        raise truncated(f"{size} bytes: the file ends inside the RIFF header")
    (declared,) = struct.unpack_from("<I", data, 4)
    end = declared + 8
    if end > size:
        raise truncated(f"RIFF declares {end} bytes, the file has {size}")
    pos = 12
    while pos < end:
        if pos + 8 > end:
            raise truncated(f"chunk header at byte {pos} runs past the RIFF end ({end})")
        kind, length = struct.unpack_from("<4sI", data, pos)
        stop = pos + 8 + length
        if stop > end:
            name = kind.decode("latin-1")
            raise truncated(f"chunk {name!r} at byte {pos} needs {stop} bytes, RIFF ends at {end}")
        pos = stop + (length & 1)


# --- TIFF and JPEG --------------------------------------------------------------------------


def check_tiff_strips(img: Image.Image, size: int) -> None:
    """The first page's strips (or tiles) lie inside the file."""
    tags = getattr(img, "tag_v2", {})
    offsets = tags.get(273) or tags.get(324) or ()
    counts = tags.get(279) or tags.get(325) or ()
    if not isinstance(offsets, tuple):
        offsets = (offsets,)
    if not isinstance(counts, tuple):
        counts = (counts,)
    for offset, count in zip(offsets, counts, strict=False):
        if not isinstance(offset, int) or not isinstance(count, int) or offset < 0 or count < 0:
            raise corrupt(f"strip offset {offset!r} and byte count {count!r} are not byte counts")
        if offset + count > size:
            raise truncated(
                f"a strip at byte {offset} needs {offset + count} bytes, the file has {size}"
            )


def _check_tiff_directory(data: bytes) -> None:
    """The first image file directory (IFD) lies inside the file."""
    size = len(data)
    if size < 8:
        raise truncated(f"{size} bytes: the file ends inside the TIFF header")
    order = "<" if data[:2] == b"II" else ">"
    offset = int(struct.unpack_from(order + "I", data, 4)[0])
    if offset < 8:
        raise corrupt(f"the first directory is at byte {offset}, inside the header")
    if offset + 2 > size:
        raise truncated(f"the first directory is at byte {offset}, the file has {size}")
    (entries,) = struct.unpack_from(order + "H", data, offset)
    end = offset + 2 + 12 * entries + 4
    if end > size:
        raise truncated(
            f"the first directory ({entries} entries) needs {end} bytes, the file has {size}"
        )


_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: markers without a length
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xd0-\xd7\xff])")  # the next marker in entropy-coded data


def _jpeg_segments(data: bytes, pos: int) -> int:
    """Walk marker segments from ``pos`` to the next SOS or EOI; the offset after it."""
    size = len(data)
    while True:
        if pos + 2 > size:
            raise truncated(f"the file ends at byte {size}, inside a marker")
        if data[pos] != 0xFF:
            raise corrupt(f"byte {pos}: 0x{data[pos]:02X} where a marker should start")
        while pos + 1 < size and data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        if pos + 2 > size:
            raise truncated(f"the file ends at byte {size}, inside a marker")
        marker = data[pos + 1]
        if marker == 0xD9:
            return pos + 2
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if pos + 4 > size:
            raise truncated(
                f"the file ends at byte {size}, inside the length of marker 0x{marker:02X}"
            )
        length = int(struct.unpack_from(">H", data, pos + 2)[0])
        if length < 2:
            raise corrupt(f"marker 0x{marker:02X} at byte {pos} declares a length of {length}")
        end = pos + 2 + length
        if end > size:
            raise truncated(
                f"marker 0x{marker:02X} at byte {pos} needs {end} bytes, the file has {size}"
            )
        if marker == 0xDA:
            return end
        pos = end


def _jpeg_header_end(data: bytes) -> int:
    """Check the segments before the first scan are complete; where the scan data starts."""
    return _jpeg_segments(data, 2)


def jpeg_is_cut(data: bytes) -> bool:
    """Whether the file ends before its EOI marker (a walk over every segment and scan).

    Used on the error path only: libjpeg reads a cut file as if an EOI followed, so a cut
    inside a table between progressive scans shows up as a "bogus" table, not as an end.
    """
    try:
        pos = _jpeg_header_end(data)
        while True:
            if data[pos - 2 : pos] == b"\xff\xd9":
                return False
            found = _JPEG_MARKER.search(data, pos)  # the end of this scan's entropy-coded data
            if found is None:
                return True
            pos = _jpeg_segments(data, found.start(1) - 1)
    except ImageError as err:
        return err.reason == "truncated"


def jpeg_scale(width: int, height: int, short_side: int | None) -> int:
    """The scale-down libjpeg decodes at (1, 2, 4 or 8) for a short-side target, as Pillow's draft picks it."""
    if short_side is None:
        return 1
    scale = min(width // short_side, height // short_side)
    return next((k for k in (8, 4, 2) if scale >= k), 1)


def decode_jpeg(data: bytes, width: int, height: int, scale: int, colorspace: str) -> np.ndarray:
    """Decode a JPEG at 1/``scale`` with libjpeg's warnings as errors (strict mode)."""
    rows, cols = (-(-height // scale), -(-width // scale)) if scale > 1 else (0, 0)
    try:
        pixels: np.ndarray = simplejpeg.decode_jpeg(
            data, colorspace=colorspace, min_height=rows, min_width=cols, strict=True
        )
    except (ValueError, RuntimeError, OSError) as err:
        reason = "truncated" if jpeg_is_cut(data) else reason_of(err)
        raise ImageError(reason, f"pixels cannot be decoded: {err}") from None
    return pixels
