"""A class activation map as a picture aligned with the photo it explains.

The map (a few cells a side: the network's last feature map) is scaled to [0, 255], resized
smoothly onto the part of the photo the network saw (all of it with ``squash``, the centre
square with ``crop``) and drawn at the photo's aspect ratio, its longest side ``side`` pixels:
a grayscale PNG with an alpha channel that is 0 where the network saw nothing. Scaled to the
photo's size it lies on it exactly (the photo as served: EXIF orientation applied).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.data.loading.preprocess import seen_box

SIDE = 128  # pixels on the heatmap's longest side


def heatmap(
    cam: np.ndarray, width: int, height: int, spec: PreprocessSpec, side: int = SIDE
) -> Image.Image:
    """An ``LA`` image at the photo's aspect ratio: evidence as gray, unseen parts transparent."""
    scale = side / max(width, height)
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    low, high = float(cam.min()), float(cam.max())
    spread = high - low if high > low else 1.0
    levels = np.clip((cam - low) / spread * 255.0, 0, 255).astype(np.uint8)
    x0, y0, x1, y1 = seen_box(width, height, spec)
    left, top = round(x0 * out_w), round(y0 * out_h)
    box_w, box_h = max(1, round(x1 * out_w) - left), max(1, round(y1 * out_h) - top)
    gray = Image.new("L", (out_w, out_h), 0)
    alpha = Image.new("L", (out_w, out_h), 0)
    gray.paste(Image.fromarray(levels).resize((box_w, box_h), Image.Resampling.BILINEAR),
               (left, top))  # fmt: skip
    alpha.paste(255, (left, top, left + box_w, top + box_h))
    return Image.merge("LA", (gray, alpha))


def png(image: Image.Image) -> bytes:
    """The heatmap as PNG bytes (a few kilobytes)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def overlay(photo: Image.Image, map_: Image.Image, strength: float = 0.6) -> Image.Image:
    """``photo`` with the heatmap laid on it in red (stronger evidence, more red), for a person."""
    gray, alpha = map_.resize(photo.size, Image.Resampling.BILINEAR).split()
    weight = np.asarray(gray, np.float32) * np.asarray(alpha, np.float32) / 255.0 * strength
    mask = Image.fromarray(weight.astype(np.uint8))
    return Image.composite(Image.new("RGB", photo.size, (220, 0, 0)), photo.convert("RGB"), mask)
