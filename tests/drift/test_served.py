"""Drift scores through the real server: the training photos score low, darkened ones high."""

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from carinspect.contracts.folders import ExportDir
from carinspect.data.manifest import read_splits
from carinspect.drift.profile import read_profile
from tests.serving.conftest import Server


def _psi(server: Server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics").text
    return {
        m[0]: float(m[1]) for m in re.findall(r'carinspect_drift_psi\{stat="(\w+)"\} (\S+)', text)
    }


def _send(server: Server, paths: list[Path], darken: bool = False) -> None:
    with httpx.Client(timeout=30) as http:
        for path in paths:
            img = Image.open(path).convert("RGB")
            if darken:
                img = img.point(lambda v: v * 0.4)
            out = Path(str(path) + ".sent.png")
            img.save(out)
            r = http.post(server.url + "/predict", files={"file": (out.name, out.read_bytes())})
            assert r.status_code == 200, r.text


def test_export_writes_a_profile_and_serving_scores_the_stream(
    upstream: dict[str, Path], serve: Callable[..., Server], tmp_path: Path
) -> None:
    profile = read_profile(ExportDir(upstream["export"]).drift)
    assert set(profile.stats) == {"brightness", "contrast", "blur"}
    assert (
        set(profile.classes) and abs(sum(next(iter(profile.classes.values())).values()) - 1) < 1e-3
    )

    rows = read_splits(upstream["splits"])
    train = [upstream["ingest"] / r.path for r in rows if r.split == "train"]
    assert len(train) == profile.images
    s = serve(MODEL_URI=str(upstream["export"]), DRIFT_WINDOW=str(len(train)))
    _send(s, train)  # the training photos themselves: the profile's own distribution
    calm = _psi(s)
    assert set(calm) == {"brightness", "contrast", "blur"}
    assert max(calm.values()) < profile.alert_psi, calm
    _send(s, train, darken=True)  # the window now holds only darkened photos
    dark = _psi(s)
    assert dark["brightness"] > profile.alert_psi, dark
    text = httpx.get(s.url + "/metrics").text
    assert f"carinspect_drift_window_images {float(len(train))}" in text
    assert re.search(r'carinspect_drift_class_psi\{task="\w+"\}', text), text


@pytest.mark.parametrize("window", ["0"])
def test_drift_window_zero_turns_the_scores_off(
    upstream: dict[str, Path], serve: Callable[..., Server], window: str
) -> None:
    s = serve(MODEL_URI=str(upstream["export"]), DRIFT_WINDOW=window)
    _send(s, sorted((upstream["ingest"] / "images").rglob("*.*"))[:2])
    assert _psi(s) == {}
