"""Drift statistics separate a shifted stream of generated car photos from an unshifted one."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from carinspect.config import DemoConfig
from carinspect.data.intake.demo import write_demo
from carinspect.drift.stats import ALERT_PSI, STATS, Binned, image_stats, psi, share_psi


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Image.Image]:
    root = tmp_path_factory.mktemp("drift-demo")
    write_demo(DemoConfig(per_class=100, broken=False), root)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".png", ".webp"})
    return [Image.open(p).convert("RGB") for p in files]


def _scores(reference: list[Image.Image], stream: list[Image.Image]) -> dict[str, float]:
    ref = [image_stats(np.asarray(im)) for im in reference]
    got = [image_stats(np.asarray(im)) for im in stream]
    return {s: Binned.of([r[s] for r in ref]).psi(g[s] for g in got) for s in STATS}


def test_an_unshifted_stream_stays_below_the_alert_and_shifted_ones_pass_it(
    photos: list[Image.Image],
) -> None:
    reference, stream = photos[::2], photos[1::2]
    calm = _scores(reference, stream)
    assert max(calm.values()) < ALERT_PSI, calm  # sampling noise alone: ~0.1 at 100 photos
    dark = _scores(reference, [im.point(lambda v: v * 0.45) for im in stream])
    assert dark["brightness"] > ALERT_PSI, dark
    blurred = _scores(reference, [im.filter(ImageFilter.GaussianBlur(2.5)) for im in stream])
    assert blurred["blur"] > ALERT_PSI, blurred
    assert blurred["brightness"] < ALERT_PSI  # blur alone does not move brightness


def test_image_stats_ignore_the_upload_resolution(photos: list[Image.Image]) -> None:
    im = photos[0]
    big = im.resize((im.width * 4, im.height * 4), Image.Resampling.BICUBIC)
    small, large = image_stats(np.asarray(im)), image_stats(np.asarray(big))
    assert abs(small["brightness"] - large["brightness"]) < 0.02
    assert abs(small["aspect"] - large["aspect"]) < 0.01


def test_psi_of_a_class_mix() -> None:
    reference = {"clean": 0.5, "dirty": 0.5}
    assert share_psi(reference, ["clean", "dirty"] * 50) == pytest.approx(0.0, abs=1e-9)
    assert share_psi(reference, ["dirty"] * 90 + ["clean"] * 10) > ALERT_PSI
    assert psi(np.array([0.5, 0.5]), np.zeros(2)) == 0.0  # an empty window is no drift
    assert Binned.of([1.0] * 20).psi([1.0, 1.0]) == pytest.approx(0.0, abs=1e-9)
