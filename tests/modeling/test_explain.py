"""Class activation maps: where the exported graph finds its class, drawn over the photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from carinspect.contracts.onnx_names import CAM, INPUT, OUTPUTS
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.data.loading.preprocess import preprocess, seen_box
from carinspect.evaluation.heatmap import heatmap
from carinspect.modeling.explain import cam_unavailable
from carinspect.modeling.onnx_export import export_onnx, session

SPEC = PreprocessSpec(img_size=128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
WIDTH, HEIGHT, PATCH = 192, 128, 36  # a 3:2 photo, squashed to the square input
COLOURS = [(230, 40, 40), (40, 60, 230)]  # class 0: a red patch, class 1: a blue one


def _photo(rng: np.random.Generator, label: int, quadrant: int) -> Image.Image:
    """Gray noise with one coloured patch somewhere inside ``quadrant`` (0 TL, 1 TR, 2 BL, 3 BR)."""
    pixels = rng.integers(90, 150, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    half_w, half_h = WIDTH // 2, HEIGHT // 2
    x = (quadrant % 2) * half_w + int(rng.integers(2, half_w - PATCH - 2))
    y = (quadrant // 2) * half_h + int(rng.integers(2, half_h - PATCH - 2))
    pixels[y : y + PATCH, x : x + PATCH] = COLOURS[label]
    return Image.fromarray(pixels)


def _quadrant(map_: Image.Image) -> int:
    """The quadrant of the heatmap's brightest pixel (seen part only)."""
    gray = np.asarray(map_.getchannel("L"), dtype=np.float32)
    y, x = np.unravel_index(int(gray.argmax()), gray.shape)
    return int(x >= gray.shape[1] / 2) + 2 * int(y >= gray.shape[0] / 2)


def _set(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels, quadrants = rng.integers(0, 2, n), rng.integers(0, 4, n)
    x = np.stack([preprocess(_photo(rng, int(c), int(q)), SPEC)
                  for c, q in zip(labels, quadrants, strict=True)])  # fmt: skip
    return x, labels, quadrants


def test_the_heatmap_peaks_where_the_patch_that_decides_the_class_is(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    x, y, _ = _set(rng, 320)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=2)
    assert cam_unavailable(model, SPEC.img_size) is None
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    data, target = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _epoch in range(6):
        for idx in torch.randperm(len(data)).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(data[idx]), target[idx]).backward()
            opt.step()
    export_onnx(model.eval(), 1.0, SPEC.img_size, 18, tmp_path / "model.onnx", explain=True)

    test_x, test_y, test_q = _set(rng, 60)
    probs, maps = session(tmp_path / "model.onnx").run([OUTPUTS[1], CAM], {INPUT: test_x})
    assert maps.shape == (60, 2, 4, 4)  # stride 32 at 128 px
    assert (probs.argmax(1) == test_y).mean() >= 0.9  # it learnt the colours
    found = [_quadrant(heatmap(maps[i, test_y[i]], WIDTH, HEIGHT, SPEC)) for i in range(60)]
    hits = float(np.mean(np.asarray(found) == test_q))
    assert hits >= 0.9, f"the heatmap's peak was in the patch's quadrant for {hits:.0%}"


def test_the_heatmap_has_the_photos_shape_and_is_transparent_where_the_crop_cut() -> None:
    cam = np.arange(16, dtype=np.float32).reshape(4, 4)
    squashed = heatmap(cam, 3000, 2000, SPEC)
    assert squashed.mode == "LA" and squashed.size == (128, 85)
    assert np.asarray(squashed.getchannel("A")).min() == 255  # squash: all of it seen
    cropped = PreprocessSpec(**{**SPEC.__dict__, "resize": "crop", "crop_pct": 1.0})
    assert seen_box(3000, 2000, cropped) == pytest.approx((1 / 6, 0.0, 5 / 6, 1.0), abs=1e-3)
    alpha = np.asarray(heatmap(cam, 3000, 2000, cropped).getchannel("A"))
    assert alpha[:, :20].max() == 0 and alpha[:, -20:].max() == 0 and alpha[:, 40:88].min() == 255
    gray = np.asarray(heatmap(cam, 3000, 2000, cropped).getchannel("L"))
    assert gray[80, 86] > gray[4, 24]  # bottom right of the map is its largest value
    assert heatmap(np.zeros((4, 4), np.float32), 10, 10, SPEC).getextrema()[0] == (0, 0)


@pytest.mark.parametrize(
    ("name", "why"),
    [("vit_tiny_patch16_224", "tokens"), ("convnext_atto", "more than average-pool"),
     ("mobilenetv3_small_050", "a layer sits between")],
)  # fmt: skip
def test_models_whose_head_is_not_a_linear_map_of_the_pooled_map_say_why(
    name: str, why: str
) -> None:
    model = timm.create_model(name, pretrained=False, num_classes=3)
    reason = cam_unavailable(model, 224 if name.startswith("vit") else 96)
    assert reason is not None and why in reason
