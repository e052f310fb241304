import io

import numpy as np
import pytest
from PIL import Image

from carinspect.data.decoding.images import (
    ImageError,
    ImageLimits,
    decode_image,
    grayscale_spread,
    resize_short_side,
)
from carinspect.data.intake.demo import _pixel_bomb_png


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def colour_image(w: int = 80, h: int = 60) -> Image.Image:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = 200
    arr[: h // 2, :, 2] = 255  # top half magenta, bottom half red
    return Image.fromarray(arr)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"plain text, not an image" * 10, "not_an_image"),
        (encode(colour_image(), "JPEG")[:300], "truncated"),
        (_pixel_bomb_png(30_000, 30_000), "pixel_bomb"),
        (encode(colour_image(20, 10), "PNG"), "too_small"),
        (encode(colour_image(), "PPM"), "unsupported_format"),
    ],
)
def test_bad_images_rejected_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError) as err:
        decode_image(data, ImageLimits(min_side=32))
    assert err.value.reason == reason
    assert err.value.detail


def test_pixel_limit_checked_before_decoding() -> None:
    data = encode(colour_image(400, 300), "PNG")
    with pytest.raises(ImageError, match="exceeds max_pixels=100000") as err:
        decode_image(data, ImageLimits(max_pixels=100_000))
    assert err.value.reason == "pixel_bomb"


def test_byte_limit() -> None:
    data = encode(colour_image(), "PNG")
    with pytest.raises(ImageError) as err:
        decode_image(data, ImageLimits(max_bytes=len(data) - 1))
    assert err.value.reason == "too_large_file"


def _modes() -> list[tuple[str, bytes]]:
    base = colour_image()
    rgba = base.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: must come out white, not black
    gray16 = Image.fromarray((np.full((60, 80), 128, dtype=np.uint16) * 257).astype(np.uint16))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE)
    return [
        ("L", encode(base.convert("L"), "PNG")),
        ("LA", encode(base.convert("LA"), "PNG")),
        ("P", encode(palette, "PNG")),
        ("P-GIF", encode(palette, "GIF")),
        ("RGBA", encode(rgba, "PNG")),
        ("CMYK", encode(base.convert("CMYK"), "JPEG", quality=95)),
        ("I;16", encode(gray16, "PNG")),
        ("1", encode(base.convert("1"), "BMP")),
        ("WEBP", encode(base, "WEBP", lossless=True)),
        ("TIFF", encode(base, "TIFF")),
    ]


@pytest.mark.parametrize(("name", "data"), _modes(), ids=[m for m, _ in _modes()])
def test_every_mode_becomes_rgb(name: str, data: bytes) -> None:
    decoded = decode_image(data)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (80, 60)
    arr = np.asarray(decoded.image)
    if name == "RGBA":
        assert (arr == 255).all()
    if name == "I;16":
        assert abs(int(arr[0, 0, 0]) - 128) <= 1  # 16-bit scaled to 8-bit, not clipped to 255
    if name == "CMYK":
        assert abs(int(arr[50, 10, 0]) - 200) < 12 and arr[50, 10, 2] < 20


def test_exif_orientation_applied() -> None:
    stored = colour_image(80, 60).transpose(Image.Transpose.ROTATE_90)  # 60 wide, 80 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    decoded = decode_image(encode(stored, "JPEG", quality=95, exif=exif))
    assert (decoded.width, decoded.height) == (80, 60)
    arr = np.asarray(decoded.image)
    assert arr[5, 40, 2] > 200 and arr[55, 40, 2] < 60  # magenta on top again


def test_resize_short_side_and_no_upscale() -> None:
    assert resize_short_side(colour_image(400, 200), 100).size == (200, 100)
    assert resize_short_side(colour_image(40, 30), 100).size == (40, 30)


def test_grayscale_spread() -> None:
    assert grayscale_spread(colour_image().convert("L").convert("RGB")) == 0
    assert grayscale_spread(colour_image()) > 100


def _photo(w: int, h: int, exif: Image.Exif | None = None) -> bytes:
    """A JPEG with detail at every scale (noise over gradients), like a phone photo."""
    rng = np.random.default_rng(w * h)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1)
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    kw = {"exif": exif} if exif is not None else {}
    return encode(Image.fromarray(noisy), "JPEG", quality=90, **kw)


@pytest.mark.parametrize("short_side", [100, 149, 150, 151, 299, 300, 301, 599, 600, 1199, 1200])
def test_reduced_decode_never_goes_below_the_short_side(short_side: int) -> None:
    decoded = decode_image(_photo(1600, 1200), short_side=short_side)
    assert decoded.image.size == (round(1600 * short_side / 1200), short_side)
    assert (decoded.width, decoded.height) == (1600, 1200)  # the file's own size
    assert decoded.reduced in (1, 2, 4, 8)
    assert 1200 // decoded.reduced >= short_side  # the decoder's output had enough pixels
    assert decoded.reduced == max(s for s in (1, 2, 4, 8) if 1200 // s >= short_side)


def test_reduced_decode_is_close_to_a_full_decode_and_keeps_the_aspect() -> None:
    data = _photo(2000, 1500)
    reduced = decode_image(data, short_side=128)
    assert reduced.reduced == 8 and reduced.image.size == (171, 128)  # 250x188 decoded
    full = resize_short_side(decode_image(data).image, 128)
    diff = np.abs(np.asarray(full, dtype=float) - np.asarray(reduced.image, dtype=float))
    assert diff.mean() < 6  # the same picture, another pixel grid


def test_reduced_decode_with_exif_rotation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    decoded = decode_image(_photo(1600, 1200, exif), short_side=150)
    assert (decoded.width, decoded.height) == (1200, 1600)
    assert decoded.image.size == (150, 200) and decoded.reduced == 8


def test_short_side_on_formats_without_reduced_decode_and_small_images() -> None:
    png = decode_image(encode(colour_image(400, 200), "PNG"), short_side=100)
    assert png.image.size == (200, 100) and png.reduced == 1
    small = decode_image(_photo(120, 90), short_side=128)  # never enlarged
    assert small.image.size == (120, 90) and small.reduced == 1


def test_truncated_jpeg_is_refused_at_a_reduced_scale_too() -> None:
    data = _photo(1600, 1200)
    with pytest.raises(ImageError) as err:
        decode_image(data[: len(data) // 2], short_side=128)
    assert err.value.reason == "truncated"
