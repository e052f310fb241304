"""Photos as a new user brings them: vehicle classes other than the demo's, sizes from 200x150 to
2000x1500, JPEG and PNG, one folder per class. Each class has its own silhouette (a low sedan, a
pickup with an open bed, a tall van) in random colours, places and sizes."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZES = ((200, 150), (640, 480), (1024, 768), (2000, 1500))


def _vehicle(
    draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], rng: random.Random
) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    paint = tuple(rng.randrange(30, 230) for _ in range(3))
    glass = (150, 190, 220)
    ground = y1
    if kind == "van":
        draw.rectangle((x0, y0 + h * 0.05, x1, ground - h * 0.12), fill=paint)
        draw.rectangle((x1 - w * 0.22, y0 + h * 0.15, x1 - w * 0.04, y0 + h * 0.45), fill=glass)
    elif kind == "sedan":
        draw.rectangle((x0, y0 + h * 0.55, x1, ground - h * 0.12), fill=paint)
        draw.polygon(
            [(x0 + w * 0.25, y0 + h * 0.55), (x0 + w * 0.35, y0 + h * 0.3),
             (x0 + w * 0.65, y0 + h * 0.3), (x0 + w * 0.78, y0 + h * 0.55)],
            fill=glass,
        )  # fmt: skip
    else:  # pickup: a cab at the front, an open bed behind
        draw.rectangle((x0, y0 + h * 0.5, x1, ground - h * 0.12), fill=paint)
        draw.rectangle((x1 - w * 0.38, y0 + h * 0.15, x1 - w * 0.05, y0 + h * 0.5), fill=paint)
        draw.rectangle((x1 - w * 0.3, y0 + h * 0.22, x1 - w * 0.1, y0 + h * 0.45), fill=glass)
        draw.rectangle(
            (x0 + w * 0.04, y0 + h * 0.42, x0 + w * 0.58, y0 + h * 0.5), fill=(40, 40, 40)
        )
    r = h * 0.13
    for cx in (x0 + w * 0.2, x1 - w * 0.2):
        draw.ellipse((cx - r, ground - 2 * r, cx + r, ground), fill=(20, 20, 20))


def write_photos(root: Path, classes: list[str], per_class: int, seed: int = 0) -> Path:
    """``root/<class>/<n>.jpg|png`` for each of ``classes``: a class named sedan, pickup or van
    has that shape; any other takes them in turn."""
    rng = random.Random(seed)
    shapes = ["sedan", "pickup", "van"]
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            width, height = SIZES[(n + c) % len(SIZES)]
            sky = tuple(rng.randrange(120, 250) for _ in range(3))
            im = Image.new("RGB", (width, height), sky)
            draw = ImageDraw.Draw(im)
            draw.rectangle((0, height * 0.7, width, height), fill=(90, 90, 85))
            bw = width * rng.uniform(0.55, 0.8)
            bh = bw * rng.uniform(0.45, 0.55)
            x0 = rng.uniform(0.02, 0.98 - bw / width) * width
            y1 = height * rng.uniform(0.78, 0.92)
            shape = name if name in shapes else shapes[c % 3]
            _vehicle(draw, shape, (int(x0), int(y1 - bh), int(x0 + bw), int(y1)), rng)
            im = im.filter(ImageFilter.GaussianBlur(max(1, width // 400)))
            if n % 2:
                im.save(folder / f"{name}_{n:03d}.jpg", quality=rng.randrange(70, 95))
            else:
                im.save(folder / f"{name}_{n:03d}.png")
    return root
