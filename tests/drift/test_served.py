"""Drift scores through the real server: the training photos score low, shifted ones high."""

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageFilter

from carinspect.config import DemoConfig
from carinspect.contracts.folders import ExportDir, IngestDir
from carinspect.data.intake.demo import demo_files
from carinspect.data.intake.manifest import read_manifest, read_splits
from carinspect.drift.profile import read_profile
from tests.serving.conftest import Server

ALL_STATS = ("brightness", "contrast", "blur", "megapixels", "embedding")


def _psi(server: Server, metric: str = "carinspect_drift_psi") -> dict[str, float]:
    text = httpx.get(server.url + "/metrics").text
    return {m[0]: float(m[1]) for m in re.findall(metric + r'\{\w+="(\w+)"\} (\S+)', text)}


def train_originals(upstream: dict[str, Path], out: Path) -> list[tuple[str, Path]]:
    """(label, file) of the training split's photos as generated, before ingest resized them."""
    train = {r.path for r in read_splits(upstream["splits"]) if r.split == "train"}
    made = {
        f"demo://{f.label}/{f.name}": f for f in demo_files(DemoConfig(per_class=24, broken=False))
    }
    out.mkdir(parents=True, exist_ok=True)
    found = []
    for row in read_manifest(IngestDir(upstream["ingest"]).manifest):
        if row.path in train:
            f = made[row.source]
            (out / f.name).write_bytes(f.make())
            found.append((f.label, out / f.name))
    return found


def _send(
    server: Server, paths: list[Path], change: Callable[[Image.Image], Image.Image] | None = None
) -> None:
    with httpx.Client(timeout=30) as http:
        for path in paths:
            data = path.read_bytes()
            if change is not None:
                changed = path.with_suffix(".changed.png")
                change(Image.open(path).convert("RGB")).save(changed)
                data = changed.read_bytes()
            r = http.post(server.url + "/predict", files={"file": (path.name, data)})
            assert r.status_code == 200, r.text


def test_export_writes_a_profile_and_serving_scores_the_stream(
    upstream: dict[str, Path], serve: Callable[..., Server], tmp_path: Path
) -> None:
    profile = read_profile(ExportDir(upstream["export"]).drift)
    assert set(profile.stats) == set(ALL_STATS)
    assert profile.embedding is not None  # resnet10t is classifier(pooled features)
    assert (
        set(profile.classes) and abs(sum(next(iter(profile.classes.values())).values()) - 1) < 1e-3
    )
    photos = train_originals(upstream, tmp_path / "train")
    train = [p for _, p in photos]
    assert len(train) == profile.images
    s = serve(
        MODEL_URI=str(upstream["export"]),
        DRIFT_WINDOW=str(len(train)),
        DRIFT_MIN_PHOTOS=str(len(train)),  # the default (100) is more than this tiny set
    )
    _send(s, train[:3])  # three photos: the scores are noise, and not published
    assert _psi(s) == {}
    assert "carinspect_drift_window_images 3.0" in httpx.get(s.url + "/metrics").text
    _send(s, train)  # the training photos themselves: the profile's own distribution
    calm = _psi(s)
    assert set(calm) == set(ALL_STATS)
    assert max(calm.values()) < profile.alert_psi, calm
    # (no claim on the class mix: a model trained 2 epochs answers one class for most photos)

    _send(s, train, lambda im: im.point(lambda v: v * 0.4))  # the window: only darkened photos
    dark = _psi(s)
    assert dark["brightness"] > profile.alert_psi, dark
    assert dark["embedding"] > profile.alert_psi, dark  # the model sees them differently too
    _send(s, train, lambda im: im.filter(ImageFilter.GaussianBlur(3)))
    blurred = _psi(s)
    assert blurred["blur"] > profile.alert_psi, blurred
    _send(s, train, lambda im: im.resize((im.width * 3, im.height * 3)))  # bigger uploads
    assert _psi(s)["megapixels"] > profile.alert_psi
    text = httpx.get(s.url + "/metrics").text
    assert f"carinspect_drift_window_images {float(len(train))}" in text


@pytest.mark.parametrize("window", ["0"])
def test_drift_window_zero_turns_the_scores_off(
    upstream: dict[str, Path], serve: Callable[..., Server], window: str
) -> None:
    s = serve(MODEL_URI=str(upstream["export"]), DRIFT_WINDOW=window)
    _send(s, sorted((upstream["ingest"] / "images").rglob("*.*"))[:2])
    assert _psi(s) == {}
