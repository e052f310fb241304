"""A corpus of malformed images, each with the reason `decode_image` must give for it.

Made from small generated pictures in every supported format, then broken the ways real uploads
and real attackers break them: cut at every structural boundary of the format (chunk, marker
segment, block, strip), bad checksums, headers that lie about the size or the data, palette and
alpha oddities, huge declared sizes, EXIF that loops or nests, animated files. Valid files of
each format and mode are in the corpus too (reason ``ok``), so a check that refused too much
fails as surely as one that let a broken file through.

Ingest and ``/predict`` must refuse every case the same way (tests/data/test_corpus.py). Inputs
the fuzzer (fuzz/) found are kept in ``found/`` as files named ``<reason>--<name>.<ext>``.

    python -m tests.corpus.malformed OUT_DIR   # writes every case as <reason>--<name>.<ext>
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FOUND = Path(__file__).parent / "found"
SIZE = (48, 40)  # larger than the tests' min_side, small enough to be quick


@dataclass(frozen=True)
class Case:
    """One corpus file and the reason it must be refused with (``ok``: accepted)."""

    name: str
    data: bytes
    reason: str
    ext: str

    @property
    def file_name(self) -> str:
        return f"{self.reason}--{self.name}.{self.ext}"


def picture(size: tuple[int, int] = SIZE, seed: int = 0) -> Image.Image:
    """A small RGB picture with edges and noise (so every codec has real work to do)."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    arr[: h // 2, :, 0] += 180
    arr[:, w // 3 : 2 * w // 3, 2] += 150
    return Image.fromarray(arr)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# --- PNG ------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    value = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", value & 0xFFFFFFFF)


def png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, length) of each chunk of a well-formed PNG."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        out.append((pos, kind, length))
        pos += 12 + length
    return out


def png_rows(width: int, height: int, rows: int, color_type: int = 2, bit_depth: int = 8) -> bytes:
    """A PNG whose IHDR declares ``height`` rows but whose IDAT holds ``rows`` of them."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row_bytes = (width * channels * bit_depth + 7) // 8
    raw = b"".join(
        b"\x00" + bytes((i * 7 + j) % 256 for j in range(row_bytes)) for i in range(rows)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def adam7_png(img: Image.Image) -> bytes:
    """An interlaced (Adam7) RGB PNG: Pillow reads these but cannot write them."""
    arr = np.asarray(img.convert("RGB"))
    h, w = arr.shape[:2]
    passes = [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ]
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        sub = arr[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        for row in sub:
            raw += b"\x00" + row.tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(bytes(raw)))
        + png_chunk(b"IEND", b"")
    )


def _with_chunk(png: bytes, index: int, new: bytes) -> bytes:
    """``png`` with chunk ``index`` replaced by the bytes ``new``."""
    pos, _, length = png_chunks(png)[index]
    return png[:pos] + new + png[pos + 12 + length :]


def _with_ihdr(png: bytes, width: int, height: int, depth: int, color: int) -> bytes:
    """``png`` with its IHDR replaced (valid CRC) by one declaring these values."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))
    return _with_chunk(png, 0, ihdr)


def png_cases() -> Iterator[Case]:
    base = encode(picture(), "PNG")
    yield Case("png_rgb", base, "ok", "png")
    for index, (pos, kind, length) in enumerate(png_chunks(base)):
        name = kind.decode()
        for where, cut in (("length", pos + 2), ("type", pos + 4), ("data", pos + 8 + length // 2),
                           ("crc", pos + 8 + length)):  # fmt: skip
            if where == "data" and length < 2:
                continue
            yield Case(f"png_cut_{index}_{name}_{where}", base[:cut], "truncated", "png")
    yield Case("png_cut_in_signature", base[:5], "truncated", "png")
    # IDAT holds half the declared rows (Pillow pads the rest), IEND's CRC valid or zeroed
    yield Case("png_20_of_40_rows", png_rows(48, 40, 20), "truncated", "png")
    half = png_rows(48, 40, 20)
    yield Case("png_20_of_40_rows_zero_iend_crc", half[:-4] + b"\x00" * 4, "corrupt", "png")
    yield Case(
        "png_40_rows_zero_iend_crc", png_rows(48, 40, 40)[:-4] + b"\x00" * 4, "corrupt", "png"
    )
    yield Case("png_40_of_40_rows", png_rows(48, 40, 40), "ok", "png")
    yield Case("png_no_iend", png_rows(48, 40, 40)[:-12], "truncated", "png")
    yield Case("png_extra_rows", png_rows(48, 40, 44), "corrupt", "png")
    yield Case(
        "png_16bit_15_of_40_rows",
        png_rows(48, 40, 15, color_type=0, bit_depth=16),
        "truncated",
        "png",
    )
    yield Case(
        "png_1bit_39_of_40_rows",
        png_rows(48, 40, 39, color_type=0, bit_depth=1),
        "truncated",
        "png",
    )
    ihdr_index = 0
    idat_index = next(i for i, c in enumerate(png_chunks(base)) if c[1] == b"IDAT")
    for index, name in ((ihdr_index, "ihdr"), (idat_index, "idat"), (-1, "iend")):
        pos, kind, length = png_chunks(base)[index]
        body = base[pos + 8 : pos + 8 + length]
        bad = png_chunk(kind, body, crc=zlib.crc32(kind + body) ^ 1)
        yield Case(f"png_bad_crc_{name}", _with_chunk(base, index, bad), "corrupt", "png")
    # a text chunk with a bad CRC before the pixels (ancillary, but still a damaged file)
    text = png_chunk(b"tEXt", b"Comment\x00hello", crc=0)
    yield Case("png_bad_crc_text", base[:33] + text + base[33:], "corrupt", "png")
    # IDAT whose zlib stream is cut, with a valid CRC over what is there
    pos, kind, length = png_chunks(base)[idat_index]
    body = base[pos + 8 : pos + 8 + length]
    yield Case(
        "png_idat_zlib_cut",
        _with_chunk(base, idat_index, png_chunk(b"IDAT", body[: length // 2])),
        "truncated",
        "png",
    )
    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 0xFF
    yield Case(
        "png_idat_zlib_garbage",
        _with_chunk(base, idat_index, png_chunk(b"IDAT", bytes(flipped))),
        "corrupt",
        "png",
    )
    # lying headers: an IHDR that claims twice the width of the rows in IDAT, a colour type
    # PNG does not have, a size no server should allocate, no width at all
    for name, ihdr, reason in (
        ("png_header_wider_than_data", (96, 40, 8, 2), "truncated"),
        ("png_bad_color_type", (48, 40, 8, 5), "corrupt"),
        ("png_huge_declared", (1 << 20, 1 << 20, 8, 2), "pixel_bomb"),
        ("png_zero_width", (0, 40, 8, 2), "corrupt"),
    ):
        yield Case(name, _with_ihdr(png_rows(48, 40, 40), *ihdr), reason, "png")
    # interlaced: whole, and cut inside the passes
    inter = adam7_png(picture())
    yield Case("png_adam7", inter, "ok", "png")
    pos, kind, length = png_chunks(inter)[1]
    raw = zlib.decompress(inter[pos + 8 : pos + 8 + length])
    short = zlib.compress(raw[: len(raw) * 3 // 4])
    yield Case(
        "png_adam7_short_passes",
        _with_chunk(inter, 1, png_chunk(b"IDAT", short)),
        "truncated",
        "png",
    )
    # palette and alpha
    pal = picture().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    yield Case("png_palette", encode(pal, "PNG"), "ok", "png")
    yield Case("png_palette_transparency", encode(pal, "PNG", transparency=3), "ok", "png")
    yield Case("png_rgba", encode(picture().convert("RGBA"), "PNG"), "ok", "png")
    yield Case("png_la", encode(picture().convert("LA"), "PNG"), "ok", "png")
    yield Case("png_16bit_gray", encode(picture().convert("I;16"), "PNG"), "ok", "png")
    yield Case("png_1bit", encode(picture().convert("1"), "PNG"), "ok", "png")
    no_plte = png_rows(48, 40, 40, color_type=3)
    yield Case("png_palette_without_plte", no_plte, "corrupt", "png")
    # animated PNG: the first frame is the image; a cut in a later frame is still a cut file
    frames = [picture(seed=i) for i in range(3)]
    apng = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    yield Case("apng", apng, "ok", "png")
    yield Case("apng_cut_in_last_frame", apng[: len(apng) - 40], "truncated", "png")


# --- JPEG -----------------------------------------------------------------------------------


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, marker, length including the marker) of each segment up to the first scan's data."""
    out, pos = [(0, 0xD8, 2)], 2
    while pos + 4 <= len(data):
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        out.append((pos, marker, length + 2))
        pos += 2 + length
        if marker == 0xDA:
            break
    return out


def jpeg_cases() -> Iterator[Case]:
    img = picture((96, 80))
    base = encode(img, "JPEG", quality=90)
    yield Case("jpeg_baseline", base, "ok", "jpg")
    segments = jpeg_segments(base)
    for index, (pos, marker, length) in enumerate(segments[1:], start=1):
        for where, cut in (("marker", pos + 1), ("length", pos + 3), ("body", pos + length // 2)):
            yield Case(f"jpeg_cut_{index}_{marker:02X}_{where}", base[:cut], "truncated", "jpg")
    scan = segments[-1][0] + segments[-1][2]
    for fraction in (0.0, 0.1, 0.5, 0.9):
        cut = scan + int((len(base) - 2 - scan) * fraction)
        yield from _cut_jpeg(f"jpeg_scan_cut_{int(fraction * 100)}", base[:cut])
    yield Case("jpeg_no_eoi", base[:-2], "truncated", "jpg")
    # a restart marker where the image declares no restart interval: libjpeg reads it as the
    # scan's data ending early
    mid = scan + (len(base) - scan) // 2
    yield Case("jpeg_stray_rst", base[:mid] + b"\xff\xd3" + base[mid:], "truncated", "jpg")
    # lying header: SOF declares more rows than the scan holds
    sof = next(s for s in segments if s[1] == 0xC0)
    tall = bytearray(base)
    struct.pack_into(">H", tall, sof[0] + 5, 160)
    yield Case("jpeg_header_taller_than_data", bytes(tall), "truncated", "jpg")
    huge = bytearray(base)
    struct.pack_into(">HH", huge, sof[0] + 5, 65000, 65000)
    yield Case("jpeg_huge_declared", bytes(huge), "pixel_bomb", "jpg")
    zero = bytearray(base)
    struct.pack_into(">H", zero, sof[0] + 7, 0)
    yield Case("jpeg_zero_width", bytes(zero), "corrupt", "jpg")
    # other JPEG flavours
    prog = encode(img, "JPEG", quality=90, progressive=True)
    yield Case("jpeg_progressive", prog, "ok", "jpg")
    for fraction in (0.3, 0.7):
        cut = int(len(prog) * fraction)
        yield from _cut_jpeg(f"jpeg_progressive_cut_{int(fraction * 100)}", prog[:cut])
    gray = encode(img.convert("L"), "JPEG", quality=90)
    yield Case("jpeg_gray", gray, "ok", "jpg")
    yield Case("jpeg_gray_cut", gray[: len(gray) * 2 // 3], "truncated", "jpg")
    cmyk = encode(img.convert("CMYK"), "JPEG", quality=90)
    yield Case("jpeg_cmyk", cmyk, "ok", "jpg")
    yield from _cut_jpeg("jpeg_cmyk_cut", cmyk[: len(cmyk) * 2 // 3])
    yield Case("jpeg_444", encode(img, "JPEG", quality=90, subsampling=0), "ok", "jpg")
    # EXIF: a rotation, an IFD that points at itself, deep nesting, nonsense orientation
    exif = Image.Exif()
    exif[0x0112] = 6
    yield Case("jpeg_exif_rotated", encode(img, "JPEG", exif=exif.tobytes()), "ok", "jpg")
    yield Case("jpeg_exif_loop", _jpeg_with_app1(base, _exif_loop()), "ok", "jpg")
    yield Case("jpeg_exif_nested", _jpeg_with_app1(base, _exif_nested(64)), "ok", "jpg")
    yield Case(
        "jpeg_exif_orientation_99", _jpeg_with_app1(base, _exif_orientation(99)), "ok", "jpg"
    )
    yield Case(
        "jpeg_exif_garbage", _jpeg_with_app1(base, b"Exif\x00\x00" + bytes(range(200))), "ok", "jpg"
    )
    yield Case(
        "jpeg_soi_then_garbage", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "corrupt", "jpg"
    )
    mpo = encode(img, "MPO", save_all=True, append_images=[picture((96, 80), seed=1)])
    yield Case("mpo", mpo, "ok", "jpg")


def _cut_jpeg(name: str, cut: bytes) -> Iterator[Case]:
    """A cut JPEG as it is, and with an end marker appended (what some tools do to a cut file)."""
    yield Case(name, cut, "truncated", "jpg")
    yield Case(f"{name}_then_eoi", cut + b"\xff\xd9", "truncated", "jpg")


def _jpeg_with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """``jpeg`` with an APP1 segment holding ``payload`` right after SOI."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _tiff_ifd(entries: list[tuple[int, int, int, int]], next_ifd: int) -> bytes:
    """An IFD: (tag, type, count, value) entries, little-endian."""
    out = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack("<HHII", tag, kind, count, value)
    return out + struct.pack("<I", next_ifd)


def _exif_orientation(value: int) -> bytes:
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + _tiff_ifd([(0x0112, 3, 1, value)], 0)


def _exif_loop() -> bytes:
    """An EXIF whose IFD0 points to an EXIF sub-IFD at IFD0 itself, and whose next IFD is IFD0."""
    return (
        b"Exif\x00\x00II*\x00"
        + struct.pack("<I", 8)
        + _tiff_ifd([(0x8769, 4, 1, 8), (0x0112, 3, 1, 3)], 8)
    )


def _exif_nested(depth: int) -> bytes:
    """EXIF sub-IFDs nested ``depth`` deep (each points to the next)."""
    ifd_size = 2 + 12 + 4
    body = b""
    for level in range(depth):
        here = 8 + level * ifd_size
        child = here + ifd_size if level + 1 < depth else 0
        body += _tiff_ifd([(0x8769, 4, 1, child)], 0)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + body


# --- GIF, WebP, TIFF, BMP -------------------------------------------------------------------


def gif_cases() -> Iterator[Case]:
    base = encode(picture().convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "GIF")
    yield Case("gif", base, "ok", "gif")
    # header 6, screen descriptor 7, colour table, image descriptor 10, LZW size 1, data, trailer
    table = 3 * 2 ** ((base[10] & 7) + 1) if base[10] & 0x80 else 0
    image_at = 13 + table
    while base[image_at] == 0x21:  # extension blocks (e.g. the graphic control extension)
        pos = image_at + 2
        while base[pos]:
            pos += base[pos] + 1
        image_at = pos + 1
    for name, cut in (("header", 4), ("screen", 10), ("table", 13 + table // 2), ("descriptor", image_at + 5),
                      ("lzw_size", image_at + 10), ("data", image_at + 11 + (len(base) - image_at) // 2),
                      ("trailer", len(base) - 1)):  # fmt: skip
        yield Case(f"gif_cut_{name}", base[:cut], "truncated", "gif")
    tall = bytearray(base)
    struct.pack_into("<H", tall, image_at + 7, SIZE[1] * 2)  # the image claims more rows
    struct.pack_into("<H", tall, 8, SIZE[1] * 2)
    yield Case("gif_header_taller_than_data", bytes(tall), "truncated", "gif")
    frames = [
        picture(seed=i).convert("P", palette=Image.Palette.ADAPTIVE, colors=32) for i in range(3)
    ]
    anim = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    yield Case("gif_animated", anim, "ok", "gif")
    yield Case("gif_animated_cut_in_last_frame", anim[: len(anim) - 30], "truncated", "gif")
    yield Case("gif_no_trailer", base[:-1], "truncated", "gif")


def riff_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    out, pos = [], 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack("<4sI", data[pos : pos + 8])
        out.append((pos, kind, length))
        pos += 8 + length + (length & 1)
    return out


def webp_cases() -> Iterator[Case]:
    for flavour, kw in (("lossy", {"quality": 80}), ("lossless", {"lossless": True})):
        base = encode(picture(), "WEBP", **kw)
        yield Case(f"webp_{flavour}", base, "ok", "webp")
        yield Case(
            f"webp_{flavour}_cut_riff", base[:8], "not_an_image", "webp"
        )  # RIFF, not yet WEBP
        for index, (pos, kind, length) in enumerate(riff_chunks(base)):
            name = kind.decode().strip()
            for where, cut in (
                ("header", pos + 4),
                ("data", pos + 8 + length // 2),
                ("end", pos + 8 + length - 1),
            ):
                yield Case(
                    f"webp_{flavour}_cut_{index}_{name}_{where}", base[:cut], "truncated", "webp"
                )
        short = bytearray(base)
        struct.pack_into("<I", short, 4, len(base) + 100)  # RIFF size beyond the file
        yield Case(f"webp_{flavour}_riff_size_lies", bytes(short), "truncated", "webp")
    frames = [picture(seed=i) for i in range(3)]
    anim = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)
    yield Case("webp_animated", anim, "ok", "webp")
    yield Case("webp_animated_cut_in_last_frame", anim[: len(anim) - 30], "truncated", "webp")


def tiff_cases() -> Iterator[Case]:
    for compression in ("raw", "tiff_lzw", "tiff_adobe_deflate", "packbits"):
        base = encode(picture(), "TIFF", compression=compression)
        name = compression.removeprefix("tiff_")
        yield Case(f"tiff_{name}", base, "ok", "tif")
        # Pillow writes the pixel strips first (from byte 8) and the IFD after them
        ifd = struct.unpack("<I", base[4:8])[0]
        yield Case(f"tiff_{name}_cut_header", base[:6], "truncated", "tif")
        yield Case(f"tiff_{name}_cut_in_strips", base[: 8 + (ifd - 8) // 2], "truncated", "tif")
        yield Case(f"tiff_{name}_cut_in_ifd", base[: ifd + 20], "truncated", "tif")
    raw = encode(picture(), "TIFF", compression="raw")
    yield Case("tiff_strip_past_the_end", _tiff_tag_set(raw, 279, len(raw)), "truncated", "tif")
    multipage = encode(picture(), "TIFF", save_all=True, append_images=[picture(seed=1)])
    yield Case("tiff_two_pages", multipage, "ok", "tif")
    rgba = encode(picture().convert("RGBA"), "TIFF")
    yield Case("tiff_rgba", rgba, "ok", "tif")
    yield Case("tiff_16bit_gray", encode(picture().convert("I;16"), "TIFF"), "ok", "tif")


def _tiff_tag_set(tiff: bytes, tag: int, value: int) -> bytes:
    """A little-endian TIFF with the single LONG/SHORT value of ``tag`` in IFD0 replaced."""
    out = bytearray(tiff)
    ifd = struct.unpack_from("<I", out, 4)[0]
    for i in range(struct.unpack_from("<H", out, ifd)[0]):
        entry = ifd + 2 + 12 * i
        found, kind, count = struct.unpack_from("<HHI", out, entry)
        if found == tag and count == 1:
            struct.pack_into("<I" if kind == 4 else "<H", out, entry + 8, value)
            return bytes(out)
    raise AssertionError(f"tag {tag} not found as a single value")


def bmp_cases() -> Iterator[Case]:
    for mode in ("RGB", "P", "L"):
        img = picture() if mode == "RGB" else picture().convert(mode)
        base = encode(img, "BMP")
        offset = struct.unpack("<I", base[10:14])[0]
        name = mode.lower()
        yield Case(f"bmp_{name}", base, "ok", "bmp")
        yield Case(f"bmp_{name}_cut_file_header", base[:10], "truncated", "bmp")
        yield Case(f"bmp_{name}_cut_info_header", base[:30], "truncated", "bmp")
        yield Case(
            f"bmp_{name}_cut_in_pixels",
            base[: offset + (len(base) - offset) // 2],
            "truncated",
            "bmp",
        )
        yield Case(f"bmp_{name}_cut_last_byte", base[:-1], "truncated", "bmp")
    base = encode(picture(), "BMP")
    huge = bytearray(base)
    struct.pack_into("<ii", huge, 18, 1 << 20, 1 << 20)
    yield Case("bmp_huge_declared", bytes(huge), "pixel_bomb", "bmp")


def other_cases() -> Iterator[Case]:
    yield Case("empty", b"", "empty", "jpg")
    yield Case("text", b"a car, in words\n" * 8, "not_an_image", "jpg")
    yield Case("ppm", encode(picture(), "PPM"), "unsupported_format", "ppm")
    yield Case("ico", encode(picture((32, 32)), "ICO"), "unsupported_format", "ico")


def cases() -> list[Case]:
    """Every generated case, then every kept fuzzer finding."""
    out = [
        *png_cases(), *jpeg_cases(), *gif_cases(), *webp_cases(), *tiff_cases(), *bmp_cases(),
        *other_cases(),
    ]  # fmt: skip
    for path in sorted(FOUND.glob("*--*")):
        reason, _, rest = path.name.partition("--")
        stem, _, ext = rest.rpartition(".")
        out.append(Case(f"found_{stem}", path.read_bytes(), reason, ext))
    names = [c.name for c in out]
    assert len(names) == len(set(names)), "corpus case names must be unique"
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write(__doc__ or "")
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for case in cases():
        (out / case.file_name).write_bytes(case.data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
