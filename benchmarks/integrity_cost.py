"""What the integrity checks cost: ``decode_image`` against the same decode without them.

The unchecked path is the decoder as it was before data/integrity.py: Pillow opens the file,
reduces a JPEG in libjpeg (``draft``), loads, applies EXIF orientation, converts to RGB and
resizes to the short side. The checked path is ``decode_image`` (container walks, PNG CRCs and row
count, JPEG through libjpeg-turbo in strict mode). Both run on the same photos, taking turns for
``--rounds`` rounds (medians printed) in a pool of ``--threads`` threads, as the server's decoding
pool does. Photos come from ``--images`` (any folder of photos), re-encoded by this script as a
phone sends them (JPEG quality 90 at 2000x1500 and 4000x3000) and as PNG screenshots (1280x960).

The serving issue's budget: the checks cost at most 5% of serving throughput. Decoding is at most
the whole of a request's CPU, so the ratio printed here bounds the server's (see also
``serve_throughput.py --baseline-src`` for the server measured end to end).

    python benchmarks/integrity_cost.py --images ../shared/data/car-integrity-indrive
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

from carinspect.data.decoding.images import decode_image, resize_short_side, to_rgb

SHORT_SIDE = 128  # the demo model's ingest.short_side


def unchecked(data: bytes) -> Image.Image:
    """The decode without integrity checks (the code before them, for comparison)."""
    img = Image.open(io.BytesIO(data))
    size = img.size
    if img.format in ("JPEG", "MPO"):
        img.draft(None, (SHORT_SIDE, SHORT_SIDE))
    img.load()
    img = ImageOps.exif_transpose(img) or img
    return resize_short_side(to_rgb(img), SHORT_SIDE, of_size=size)


def checked(data: bytes) -> Image.Image:
    return decode_image(data, short_side=SHORT_SIDE).image


def photos(folder: Path, count: int) -> list[Image.Image]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not files:
        raise SystemExit(f"{folder}: no photos")
    step = max(1, len(files) // count)
    return [Image.open(p).convert("RGB") for p in files[::step][:count]]


def encoded(images: list[Image.Image], size: tuple[int, int], fmt: str) -> list[bytes]:
    out = []
    for img in images:
        buf = io.BytesIO()
        resized = img.resize(size, Image.Resampling.BICUBIC)
        resized.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


def rate(fn: Callable[[bytes], Image.Image], datas: list[bytes], pool: ThreadPoolExecutor) -> float:
    start = time.perf_counter()
    for _ in pool.map(fn, datas):
        pass
    return len(datas) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "car-integrity-indrive",
    )
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    images = photos(args.images, args.count)
    cases = [
        ("JPEG 2000x1500 q90", encoded(images, (2000, 1500), "JPEG")),
        ("JPEG 4000x3000 q90", encoded(images, (4000, 3000), "JPEG")),
        ("PNG 1280x960", encoded(images, (1280, 960), "PNG")),
    ]
    print(f"{len(images)} photos from {args.images}, {args.threads} threads, {args.rounds} rounds")
    print(f"{'photos':20} {'unchecked/s':>12} {'checked/s':>10} {'checked/unchecked':>18}")
    with ThreadPoolExecutor(args.threads) as pool:
        for name, datas in cases:
            for fn in (unchecked, checked):  # warm-up, and the same pixels come out
                fn(datas[0])
            a = [b.tobytes() for b in (unchecked(datas[0]), checked(datas[0]))]
            same = "same pixels" if a[0] == a[1] else "pixels differ"
            plain, strict = [], []
            for _ in range(args.rounds):
                plain.append(rate(unchecked, datas, pool))
                strict.append(rate(checked, datas, pool))
            p, s = statistics.median(plain), statistics.median(strict)
            print(f"{name:20} {p:12.1f} {s:10.1f} {s / p:17.2f}x  ({same})")


if __name__ == "__main__":
    main()
