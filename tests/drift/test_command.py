"""`carinspect drift` against a registered version: a calm set passes, a darkened one alerts."""

import json
from pathlib import Path

from PIL import Image

from tests.conftest import registered_store
from tests.drift.test_served import train_originals
from tests.test_cli import one_line_error, run


def test_drift_reports_a_folder_against_a_registered_version(
    upstream: dict[str, Path], tmp_path: Path
) -> None:
    uri = registered_store(tmp_path, upstream)
    calm = tmp_path / "calm"
    photos = [p for _, p in train_originals(upstream, calm)]
    dark = tmp_path / "dark"
    dark.mkdir()
    for p in photos:
        Image.open(p).convert("RGB").point(lambda v: v * 0.4).save(dark / p.name)
    (dark / "notes.json").write_text("{}")  # a feedback log's records are not photos

    few = run(  # the default DRIFT_MIN_PHOTOS (100): a darkened set this small is not judged
        "drift", str(dark), "--version", "1", "--fail-on-alert", MLFLOW_TRACKING_URI=uri
    )
    assert few.returncode == 0, few.stderr
    assert "ALERT" not in few.stdout
    assert f"not judged: {len(photos)} answered photos, fewer than DRIFT_MIN_PHOTOS 100" in (
        few.stdout
    )

    minimum = str(len(photos))
    out = run(
        "drift", str(calm), "--version", "1", MLFLOW_TRACKING_URI=uri, DRIFT_MIN_PHOTOS=minimum
    )
    assert out.returncode == 0, out.stderr
    assert (
        f"{len(photos)} photos from {calm} (0 unusable) against carinspect version 1" in out.stdout
    )
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[2:]}
    for stat in ("brightness", "contrast", "blur", "megapixels", "embedding"):
        assert "ALERT" not in rows[stat], out.stdout  # the training photos: no shift
    # a model trained 2 epochs answers one class for nearly every photo: the class mix alerts
    assert "classes:label" in rows and "answered label: " in out.stdout

    report = tmp_path / "report.json"
    out = run(
        "drift", str(dark), "--version", "1", "--out", str(report), "--fail-on-alert",
        MLFLOW_TRACKING_URI=uri, DRIFT_MIN_PHOTOS=minimum,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "ALERT" in out.stdout and "brightness" in out.stdout
    written = json.loads(report.read_text())
    assert written["photos"] == len(photos) and "brightness" in written["alerts"]
    assert written["psi"]["brightness"] > written["alert_psi"]


def test_drift_on_an_empty_folder_is_one_clear_error(
    upstream: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    out = run("drift", str(tmp_path / "empty"), "--model-uri", str(upstream["export"]))
    assert "no files in this folder" in one_line_error(out)
