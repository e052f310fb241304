"""The one evaluation/serving preprocessing function, and the spec model.json stores for it.

Evaluation, the ONNX parity check and serving call :func:`preprocess` with the same
:class:`PreprocessSpec`; training augmentations run first and then end in this same function,
so a model never sees pixels prepared differently from how it was trained.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.data.decoding.images import resize_short_side


def _resize(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    size = spec.img_size
    if spec.resize == "squash":
        if img.size == (size, size):
            return img
        return img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    scaled = round(size / spec.crop_pct)
    w, h = img.size
    ratio = scaled / min(w, h)
    img = img.resize(
        (max(scaled, round(w * ratio)), max(scaled, round(h * ratio))), Image.Resampling.BILINEAR
    )
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def seen_box(width: int, height: int, spec: PreprocessSpec) -> tuple[float, float, float, float]:
    """The part of a ``width`` x ``height`` photo the network sees: (left, top, right, bottom).

    As fractions of the photo's sides. ``squash`` sees all of it; ``crop`` the centre square
    that :func:`_resize` cuts out (the same rounding). A map over the network's input lies on
    this box of the photo.
    """
    if spec.resize == "squash":
        return 0.0, 0.0, 1.0, 1.0
    size, scaled = spec.img_size, round(spec.img_size / spec.crop_pct)
    ratio = scaled / min(width, height)
    w, h = max(scaled, round(width * ratio)), max(scaled, round(height * ratio))
    left, top = (w - size) // 2, (h - size) // 2
    return left / w, top / h, (left + size) / w, (top + size) / h


def preprocess(img: Image.Image | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """RGB image (PIL or HxWx3 uint8) -> float32 array of shape (3, img_size, img_size)."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if spec.source_short_side:
        img = resize_short_side(img, spec.source_short_side)
    pixels = np.asarray(_resize(img, spec), dtype=np.float32) * np.float32(1.0 / 255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    out: np.ndarray = np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))
    return out
