"""A generated, deterministic clean-vs-dirty car dataset for demos and tests (no download).

Each image is a side view of a car on a street: sky, buildings, road, body, cabin, windows and
wheels, in random colours, sizes and aspect ratios. "dirty" cars carry mud splatter and a dust
film of varying strength, from heavy to barely visible; "clean" cars sometimes have dark
confounders (shadows, leaves) and reflections. ``classes`` picks the label set: the default
clean/dirty is binary; a severity scale such as clean/dusty/muddy (light film and a few
splotches / caked mud) is a multiclass dataset drawn the same way. Sizes, aspect ratios, file formats and grayscale
are drawn from the same distributions for both classes, so no trivial feature gives the label away.

A second, independent task: a fraction ``damaged`` of the cars carry scratches and a dent, drawn
from their own random stream (so a car's scene is the same with or without damage). The folder
holds ``tasks.csv`` beside the class subfolders, a manifest with a column per task
(``path,cleanliness,damage``) for training both together; every tenth image's damage cell is
left empty, as real labelling leaves gaps.

With ``broken`` on, a handful of deliberately bad files (empty, truncated, not an image, a
decompression bomb header, too small, unsupported format, an exact and a near duplicate) give
validation something to do.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from carinspect.config import DemoConfig
from carinspect.io import staged_dir

# how much dirt each class name carries: None (clean) or the range a severity level is drawn from
DIRT_LEVELS: dict[str, tuple[float, float] | None] = {
    "clean": None,
    "dirty": (0.2, 1.0),  # from light dust to caked
    "dusty": (0.15, 0.45),
    "muddy": (0.6, 1.0),
}

_BODY_COLOURS = [
    (235, 235, 232),
    (25, 25, 28),
    (170, 172, 176),
    (180, 30, 35),
    (30, 60, 150),
    (95, 98, 104),
    (205, 190, 160),
    (30, 80, 50),
    (230, 190, 40),
    (120, 80, 50),
]
_MUD_COLOURS = [(92, 70, 45), (120, 98, 70), (70, 60, 50), (140, 125, 100)]


@dataclass(frozen=True)
class DemoFile:
    """One file of the demo dataset, produced lazily by ``make``."""

    label: str
    name: str
    make: Callable[[], bytes]
    damage: str = ""  # "damaged", "intact", or "" (not labelled)


TASKS_CSV = "tasks.csv"  # the multi-task manifest write_demo puts beside the class folders
DAMAGE_CLASSES = ("damaged", "intact")


def _jitter(rng: np.random.Generator, colour: tuple[int, ...], amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _draw_damage(
    d: ImageDraw.ImageDraw, rng: np.random.Generator, body: tuple[float, float, float, float]
) -> None:
    """A scrape to bare metal, scratches through the paint and a dent on the body box.

    ``body`` is ``(x0, y0, width, height)``; the marks are large enough to survive the 96 px
    the demo trains at.
    """
    x0, y0, cw, ch = body
    sx, sy = x0 + cw * rng.uniform(0.1, 0.65), y0 + ch * rng.uniform(0.2, 0.5)
    sw, sh = cw * rng.uniform(0.15, 0.28), ch * rng.uniform(0.3, 0.55)
    ragged = [  # a scraped panel: light primer/metal with a jagged outline
        (sx + sw * np.cos(a) * rng.uniform(0.6, 1.0), sy + sh * np.sin(a) * rng.uniform(0.6, 1.0))
        for a in np.linspace(0, 2 * np.pi, 11)[:-1]
    ]
    shade = int(rng.integers(170, 215))
    d.polygon(ragged, fill=(shade, shade, shade - 8, 235))
    for _ in range(int(rng.integers(3, 7))):  # scratches running out of the scrape
        px, py = sx, sy
        points = [(px, py)]
        for _ in range(int(rng.integers(2, 4))):
            px += cw * rng.uniform(0.06, 0.14) * rng.choice([-1, 1])
            py = float(np.clip(py + ch * rng.uniform(-0.2, 0.2), y0 + 2, y0 + ch - 2))
            points.append((px, py))
        light = int(rng.integers(200, 250))
        d.line(points, fill=(light, light, light - 10, 240), width=int(rng.integers(3, 6)))
    dx, dy = x0 + cw * rng.uniform(0.15, 0.8), y0 + ch * rng.uniform(0.35, 0.7)
    r = ch * rng.uniform(0.3, 0.45)
    d.ellipse([dx - r * 1.4, dy - r, dx + r * 1.4, dy + r], fill=(0, 0, 0, 140))  # dent shadow
    d.arc(
        [dx - r * 1.4, dy - r, dx + r * 1.4, dy + r], 200, 340, fill=(255, 255, 255, 200), width=3
    )


def _draw_scene(
    rng: np.random.Generator,
    dirt: tuple[float, float] | None,
    size: tuple[int, int],
    damage: np.random.Generator | None = None,
) -> Image.Image:
    """Render one car at 2x and downsample (cheap anti-aliasing); ``damage`` draws damage.

    The parts draw from ``rng`` in a fixed order: the demo data is the same photo for photo.
    """
    w, h = size[0] * 2, size[1] * 2
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img, "RGBA")
    horizon = _draw_street(d, rng, w, h)
    box = _draw_car(d, rng, w, h, horizon)
    if damage is not None:
        _draw_damage(d, damage, box)
    _draw_surface(d, rng, dirt, box)
    return _camera(img.resize(size, Image.Resampling.BILINEAR), rng)


def _draw_street(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> int:
    """Sky, buildings and road; the horizon's height."""
    horizon = int(h * rng.uniform(0.45, 0.65))
    sky = _jitter(rng, (150, 180, 215) if rng.random() < 0.7 else (175, 175, 180), 25)
    for y in range(horizon):  # vertical sky gradient
        t = y / max(1, horizon)
        d.line([(0, y), (w, y)], fill=tuple(int(c * (1 - 0.25 * t)) for c in sky))
    for _ in range(int(rng.integers(2, 7))):  # buildings
        bx = int(rng.uniform(-0.1, 1.0) * w)
        bw, bh = int(rng.uniform(0.1, 0.35) * w), int(rng.uniform(0.15, 0.5) * h)
        d.rectangle([bx, horizon - bh, bx + bw, horizon], fill=_jitter(rng, (140, 130, 120), 50))
    d.rectangle([0, horizon, w, h], fill=_jitter(rng, (85, 85, 90), 20))  # road
    return horizon


def _draw_car(
    d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, horizon: int
) -> tuple[int, int, int, int]:
    """Body, cabin, windows, wheels and a light; the body's box (x0, y0, width, height)."""
    cw = int(w * rng.uniform(0.55, 0.85))
    ch = int(cw * rng.uniform(0.2, 0.28))
    x0 = int((w - cw) * rng.uniform(0.1, 0.9))
    y1 = int(horizon + (h - horizon) * rng.uniform(0.45, 0.8))
    y0 = y1 - ch
    body = _jitter(rng, _BODY_COLOURS[int(rng.integers(len(_BODY_COLOURS)))], 18)
    d.ellipse(
        [x0 - cw * 0.02, y1 - ch * 0.1, x0 + cw * 1.02, y1 + ch * 0.35], fill=(30, 30, 30, 120)
    )
    d.rounded_rectangle([x0, y0, x0 + cw, y1], radius=max(2, ch // 3), fill=body)
    cab_l, cab_r = x0 + cw * rng.uniform(0.15, 0.3), x0 + cw * rng.uniform(0.7, 0.85)
    cab_h = ch * rng.uniform(0.55, 0.85)
    d.polygon(
        [(cab_l, y0), (cab_l + cw * 0.1, y0 - cab_h), (cab_r - cw * 0.08, y0 - cab_h), (cab_r, y0)],
        fill=body,
    )
    glass = _jitter(rng, (60, 75, 95), 15)
    inset, mid, top = cab_h * 0.15, (cab_l + cab_r) / 2, y0 - cab_h + cab_h * 0.15
    front = [
        (cab_l + inset, y0 - 2),
        (cab_l + cw * 0.1 + inset, top),
        (mid - 2, top),
        (mid - 2, y0 - 2),
    ]
    back = [
        (mid + 2, y0 - 2),
        (mid + 2, top),
        (cab_r - cw * 0.08 - inset, top),
        (cab_r - inset, y0 - 2),
    ]
    d.polygon(front, fill=glass)
    d.polygon(back, fill=glass)
    r = ch * rng.uniform(0.38, 0.48)
    for cx in (x0 + cw * 0.2, x0 + cw * 0.8):
        d.ellipse([cx - r, y1 - r, cx + r, y1 + r], fill=(20, 20, 20))
        d.ellipse([cx - r * 0.5, y1 - r * 0.5, cx + r * 0.5, y1 + r * 0.5], fill=(150, 150, 155))
    d.rectangle([x0 + cw * 0.95, y0 + ch * 0.2, x0 + cw, y0 + ch * 0.4], fill=(240, 220, 140))
    return x0, y0, cw, ch


def _draw_surface(
    d: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    dirt: tuple[float, float] | None,
    box: tuple[int, int, int, int],
) -> None:
    """Dirt (a film and splotches, ``dirt`` the level's range) or a clean body's reflection."""
    x0, y0, cw, ch = box
    y1 = y0 + ch

    def splotches(
        count: int, colour: tuple[int, ...], alpha: tuple[int, int], scale: float
    ) -> None:
        for _ in range(count):
            sx = x0 + cw * rng.uniform(0.0, 1.0)
            sy = y0 + ch * rng.beta(2.5, 1.2)  # denser towards the sills
            sr = ch * scale * rng.uniform(0.3, 1.0)
            a = int(rng.integers(*alpha))
            d.ellipse([sx - sr, sy - sr * 0.7, sx + sr, sy + sr * 0.7], fill=(*colour, a))

    if dirt is not None:
        level = rng.uniform(*dirt)
        mud = _jitter(rng, _MUD_COLOURS[int(rng.integers(len(_MUD_COLOURS)))], 15)
        film = (*mud, int(50 + 90 * level))
        d.rounded_rectangle([x0, y0 + ch * 0.4, x0 + cw, y1], radius=max(2, ch // 3), fill=film)
        splotches(int(10 + 60 * level), mud, (int(90 + 60 * level), int(150 + 100 * level)), 0.2)
    else:
        hx = x0 + cw * rng.uniform(0.2, 0.6)  # a reflection along the body
        d.ellipse([hx, y0 + ch * 0.15, hx + cw * 0.3, y0 + ch * 0.35], fill=(255, 255, 255, 70))
        if rng.random() < 0.25:  # shadows, leaves, a parking sticker: not dirt
            splotches(int(rng.integers(2, 8)), _jitter(rng, (40, 40, 35), 20), (60, 140), 0.12)


def _camera(out: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Exposure, sensor noise and (sometimes) blur, as a camera adds them."""
    arr = np.asarray(out, dtype=np.float32)
    arr = arr * rng.uniform(0.7, 1.25) + rng.uniform(-20, 20)  # exposure
    arr += rng.normal(0.0, rng.uniform(2, 10), arr.shape)  # sensor noise
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return out


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


_EXTENSIONS = {3: "png", 5: "webp", 7: "png", 11: "png", 13: "jpg", 17: "png", 19: "jpg", 21: "png"}


def _file_name(label: str, i: int) -> str:
    return f"{label}_{i:04d}.{_EXTENSIONS.get(i % 25, 'jpg')}"


def _damage_rng(seed: int, class_idx: int, i: int, fraction: float) -> np.random.Generator | None:
    """The damage stream of an image, or None when the car is intact."""
    rng = np.random.default_rng([seed, class_idx, i, 1])
    return rng if rng.random() < fraction else None


def _image_bytes(seed: int, class_idx: int, i: int, label: str, damaged: float = 0.0) -> bytes:
    """Bytes of the i-th image of a class; format and colour mode vary with the index."""
    rng = np.random.default_rng([seed, class_idx, i])
    aspect = rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4])
    width = int(rng.integers(72, 200))
    img = _draw_scene(
        rng,
        DIRT_LEVELS[label],
        size=(width, max(40, int(width / aspect))),
        damage=_damage_rng(seed, class_idx, i, damaged),
    )
    if rng.random() < 0.08:
        img = img.convert("L")
    variant = i % 25
    if variant == 3:
        return _encode(img.convert("P", palette=Image.Palette.ADAPTIVE), "PNG")
    if variant == 5:
        return _encode(img, "WEBP", quality=85)
    if variant == 7:
        rgba = img.convert("RGBA")
        rgba.putalpha(Image.new("L", img.size, 230))
        return _encode(rgba, "PNG")
    if variant == 11:
        return _encode(img.convert("LA"), "PNG")
    if variant == 13:
        return _encode(img.convert("CMYK"), "JPEG", quality=90)
    if variant == 17:
        gray16 = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        return _encode(Image.fromarray(gray16.astype(np.uint16)), "PNG")
    if variant == 19:  # stored sideways with an EXIF orientation tag, as phones do
        exif = Image.Exif()
        exif[0x0112] = 6
        return _encode(img.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif)
    if variant == 21:
        return _encode(img, "PNG")
    return _encode(img, "JPEG", quality=int(rng.integers(60, 96)))


def _pixel_bomb_png(width: int, height: int) -> bytes:
    """Make a tiny PNG whose header claims ``width`` x ``height`` pixels."""
    png = _encode(Image.new("L", (1, 1)), "PNG")
    ihdr_start = 8 + 4  # signature, chunk length
    body = bytearray(png[ihdr_start : ihdr_start + 4 + 13])  # b"IHDR" + 13 data bytes
    body[4:12] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(bytes(body)) & 0xFFFFFFFF)
    return png[:ihdr_start] + bytes(body) + crc + png[ihdr_start + 17 + 4 :]


def demo_files(cfg: DemoConfig) -> list[DemoFile]:
    """Every file of the demo dataset, in a fixed order; bytes are made on demand."""
    classes = list(cfg.classes)

    def image(c: int, i: int) -> Callable[[], bytes]:
        return lambda: _image_bytes(cfg.seed, c, i, classes[c], cfg.damaged)

    def damage(c: int, i: int) -> str:
        if i % 10 == 9:
            return ""  # not labelled for damage
        return DAMAGE_CLASSES[_damage_rng(cfg.seed, c, i, cfg.damaged) is None]

    files = [
        DemoFile(label, _file_name(label, i), image(c, i), damage(c, i))
        for c, label in enumerate(classes)
        for i in range(cfg.per_class)
    ]
    if not cfg.broken:
        return files

    def truncated() -> bytes:
        data = image(0, 1)()
        return data[: len(data) * 6 // 10]

    def near_duplicate() -> bytes:  # the same photo, re-encoded smaller
        img = Image.open(io.BytesIO(image(0, 2)())).convert("RGB")
        return _encode(img.resize((img.width * 9 // 10, img.height * 9 // 10)), "JPEG", quality=70)

    first, second = classes[0], classes[1]
    files += [
        DemoFile(first, "broken_zero_bytes.jpg", lambda: b""),
        DemoFile(first, "broken_truncated.jpg", truncated),
        DemoFile(second, "broken_not_an_image.jpg", lambda: b"this is not an image\n" * 20),
        DemoFile(second, "broken_pixel_bomb.png", lambda: _pixel_bomb_png(40_000, 40_000)),
        DemoFile(first, "broken_too_small.png", lambda: _encode(Image.new("RGB", (20, 14)), "PNG")),
        DemoFile(
            second, "broken_unsupported.ppm", lambda: _encode(Image.new("RGB", (64, 48)), "PPM")
        ),
        DemoFile(second, f"{second}_0004_copy.jpg", image(1, 4), damage(1, 4)),
        DemoFile(first, f"resaved_{first}_0002.jpg", near_duplicate, damage(0, 2)),
    ]
    return files


def write_demo(cfg: DemoConfig, out: Path) -> int:
    """Write the demo dataset as ``out/<class>/<file>`` plus ``out/tasks.csv``, atomically.

    Returns the number of image files written.
    """
    files = demo_files(cfg)
    lines = ["path,cleanliness,damage"]
    with staged_dir(Path(out)) as tmp:
        for f in files:
            (tmp / f.label).mkdir(exist_ok=True)
            (tmp / f.label / f.name).write_bytes(f.make())
            lines.append(f"{f.label}/{f.name},{f.label},{f.damage}")
        (tmp / TASKS_CSV).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(files)
