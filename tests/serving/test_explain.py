"""?explain=true through the real server: a heatmap per answer, aligned with the photo."""

import base64
import io
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
from PIL import Image

from tests.conftest import VENV_BIN
from tests.serving.conftest import Server, image_bytes


def _post(server: Server, query: str = "", size: tuple[int, int] = (300, 200)) -> httpx.Response:
    files = {"file": ("car.jpg", image_bytes(size=size), "image/jpeg")}
    return httpx.post(f"{server.url}/predict{query}", files=files, timeout=30)


def _heatmap(explanation: dict) -> Image.Image:  # type: ignore[type-arg]
    image = Image.open(io.BytesIO(base64.b64decode(explanation["heatmap_png"])))
    assert image.format == "PNG" and image.mode == "LA"
    assert image.size == (explanation["width"], explanation["height"])
    return image


def test_an_explained_answer_carries_the_heatmap_of_its_label(served: Server) -> None:
    plain = _post(served)
    assert plain.status_code == 200 and "explanation" not in plain.json()
    r = _post(served, "?explain=true")
    assert r.status_code == 200, r.text
    body = r.json()
    explanation = body["explanation"]
    top = max(body["probabilities"], key=body["probabilities"].get)
    assert explanation["label"] == (body["label"] if body["label"] != "uncertain" else top)
    assert _heatmap(explanation).size == (128, 85)  # the photo's 3:2, longest side 128
    portrait = _post(served, "?explain=1", size=(150, 300)).json()["explanation"]
    assert (portrait["width"], portrait["height"]) == (64, 128)


def test_a_batch_explains_every_photo_and_a_bad_value_is_named(served: Server) -> None:
    files = [("files", (f"car{i}.jpg", image_bytes(size=(80 + i, 60)), "image/jpeg"))
             for i in range(3)]  # fmt: skip
    r = httpx.post(f"{served.url}/predict/batch?explain=true", files=files, timeout=30)
    assert r.status_code == 200, r.text
    for prediction in r.json()["predictions"]:
        _heatmap(prediction["explanation"])
    bad = _post(served, "?explain=please")
    assert bad.status_code == 422 and "explain='please'" in bad.json()["detail"]


def test_a_model_without_maps_refuses_to_explain_naming_why(
    serve: Callable[..., Server], upstream: dict[str, Path], tmp_path: Path
) -> None:
    # a version exported before explanations existed: its model.json has no explain entry
    older = tmp_path / "older"
    shutil.copytree(upstream["export"], older)
    card = json.loads((older / "model.json").read_text())
    card.pop("explain")
    (older / "model.json").write_text(json.dumps(card))
    s = serve(MODEL_URI=str(older))
    assert _post(s).status_code == 200  # answers as before
    r = _post(s, "?explain=true")
    assert r.status_code == 422
    assert "has no class activation maps: it was exported before" in r.json()["detail"]


def _predict_explain(
    photos: Path, out: Path, heat: Path, model: Path
) -> subprocess.CompletedProcess[str]:
    """`carinspect predict PHOTOS --out OUT --explain HEAT` with MODEL_URI=model, succeeded."""
    done = subprocess.run(
        [str(VENV_BIN / "carinspect"), "predict", str(photos), "--out", str(out), "--explain",
         str(heat)], env={**os.environ, "MODEL_URI": str(model)}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def test_predict_explain_draws_each_answer_on_its_photo(
    tmp_path: Path, upstream: dict[str, Path]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "front.jpg").write_bytes(image_bytes(size=(90, 60)))
    (photos / "side.png").write_bytes(image_bytes("PNG", size=(40, 80)))
    (photos / "notes.txt").write_text("not a photo")
    out, heat = tmp_path / "preds.json", tmp_path / "heatmaps"
    done = _predict_explain(photos, out, heat, upstream["export"])
    assert "3 inputs, 1 unusable" in done.stdout and f"heatmaps in {heat}" in done.stdout
    rows = {Path(r["path"]).name: r for r in json.loads(out.read_text())}
    assert "explanation" not in rows["notes.txt"]
    for name, size in (("front.jpg", (90, 60)), ("side.png", (40, 80))):
        explanation = rows[name]["explanation"]
        assert explanation["label"] in ("clean", "dirty")
        with Image.open(explanation["file"]) as drawn:  # the photo, the map laid on it
            assert drawn.size == size and drawn.mode == "RGB"
    assert sorted(p.name for p in heat.iterdir()) == ["00000_front.png", "00002_side.png"]


def test_predict_explain_draws_a_phone_photo_at_512_px(
    tmp_path: Path, upstream: dict[str, Path]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    phone = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    phone.save(photos / "phone.jpg", quality=90)
    out, heat = tmp_path / "preds.json", tmp_path / "heatmaps"
    _predict_explain(photos, out, heat, upstream["export"])
    (row,) = json.loads(out.read_text())
    with Image.open(row["explanation"]["file"]) as drawn:  # reduced in the decoder, then drawn
        assert drawn.size == (512, 384)
