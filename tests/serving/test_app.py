"""Every route of a real `carinspect serve` process; bad uploads; auth."""

import gc
import io
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from carinspect.data.decoding.images import ImageLimits
from carinspect.serving.inference import pixels_for
from carinspect.serving.loaded import ModelRef
from carinspect.serving.opening import open_model
from carinspect.serving.settings import ServeSettings
from tests.corpus.malformed import png_rows
from tests.serving.conftest import Server, image_bytes


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pixel_bomb_png(side: int = 60_000) -> bytes:
    """A valid PNG header announcing side x side pixels, with almost no data behind it."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _chunked_multipart(size: int) -> Iterator[bytes]:
    """A well-formed multipart body with one ``size``-byte file, streamed (no Content-Length)."""
    yield b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
    yield b"Content-Type: image/jpeg\r\n\r\n"
    for _ in range(size // 65536):
        yield b"\xff" * 65536
    yield b"\r\n--b0undary--\r\n"


def animated_gif() -> bytes:
    frames = [Image.new("P", (48, 48), color=i * 40) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def sixteen_bit_png() -> bytes:
    arr = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_routes_answer_like_the_offline_model(
    serve: Callable[..., Server], upstream: dict[str, Path]
) -> None:
    s = serve(MODEL_URI=str(upstream["export"]))
    assert httpx.get(s.url + "/healthz").json() == {"status": "ok", "detail": None}
    assert httpx.get(s.url + "/readyz").json()["status"] == "ready"
    info = httpx.get(s.url + "/model").json()
    assert info["ready"] and info["execution_provider"] == "CPUExecutionProvider"
    assert info["classes"] == ["clean", "dirty"] and info["last_reload_error"] is None
    assert {"positive_class", "t_low", "t_high"} <= info["thresholds"].keys()

    data = image_bytes("JPEG")
    r = httpx.post(s.url + "/predict", files={"file": ("car.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in ("clean", "dirty", "uncertain")
    assert body["filename"] == "car.jpg" and body["processing_ms"] > 0
    assert body["model"] == {"name": None, "version": None, "alias": None}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["confidence"] == pytest.approx(
        body["probabilities"][body["label"]]
        if body["label"] != "uncertain"
        else max(body["probabilities"].values())
    )

    folder = upstream["export"]
    model = open_model(ModelRef.parse(str(folder)), None, folder, ServeSettings())
    offline = model.probabilities(pixels_for(data, model, ImageLimits())[None])[0]
    assert [body["probabilities"][c] for c in model.classes] == pytest.approx(
        offline.tolist(), abs=1e-5
    )

    files = [
        ("files", (f"{i}.png", image_bytes("PNG", size=(40 + i, 40)), "image/png"))
        for i in range(3)
    ]
    batch = httpx.post(s.url + "/predict/batch", files=files)
    assert batch.status_code == 200, batch.text
    assert [p["filename"] for p in batch.json()["predictions"]] == ["0.png", "1.png", "2.png"]

    metrics = httpx.get(s.url + "/metrics").text
    assert 'carinspect_requests_total{method="POST",route="/predict",status="200"} 1.0' in metrics
    assert "carinspect_batch_size_count" in metrics and "carinspect_queue_seconds_bucket" in metrics
    assert (
        'carinspect_model_version{alias="",name="",precision="fp32",provider="CPUExecutionProvider",version=""} 1.0'
        in metrics
    )
    assert "carinspect_model_reloads_total 1.0" in metrics
    assert httpx.get(s.url + "/docs").status_code == 200
    paths = httpx.get(s.url + "/openapi.json").json()["paths"]
    assert {"/predict", "/predict/batch", "/model", "/readyz"} <= paths.keys()
    # off on this server (ALLOW_URL_FETCH, CARINSPECT_WEBHOOK_SECRET unset): not offered in /docs
    assert not {"/predict/url", "/webhooks/mlflow"} & paths.keys()
    url = httpx.post(s.url + "/predict/url", json={"url": "https://example.com/a.jpg"})
    assert url.status_code == 403 and "ALLOW_URL_FETCH" in url.json()["detail"]


def _metric(text: str, name: str) -> float:
    """The value of one unlabelled (or fully spelled-out) sample in Prometheus text."""
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.rsplit(" ", 1)[1])


def test_batches_never_exceed_max_batch_size(
    serve: Callable[..., Server], upstream: dict[str, Path]
) -> None:
    """24 uploads at once, a batcher told to wait long for company: batches fill to 4, no more."""
    s = serve(MODEL_URI=str(upstream["export"]), MAX_BATCH_SIZE="4", MAX_WAIT_MS="300")
    data = image_bytes("JPEG", size=(96, 64))

    def post(i: int) -> int:
        files = {"file": (f"{i}.jpg", data, "image/jpeg")}
        return httpx.post(s.url + "/predict", files=files, timeout=60).status_code

    with ThreadPoolExecutor(24) as pool:
        assert list(pool.map(post, range(24))) == [200] * 24
    metrics = httpx.get(s.url + "/metrics").text
    batches = _metric(metrics, "carinspect_batch_size_count")
    assert _metric(metrics, "carinspect_batch_size_sum") == 24
    assert _metric(metrics, 'carinspect_batch_size_bucket{le="4.0"}') == batches  # none over 4
    assert _metric(metrics, 'carinspect_batch_size_bucket{le="2.0"}') < batches  # it did batch


def test_a_lone_request_does_not_wait_for_company(
    serve: Callable[..., Server], upstream: dict[str, Path]
) -> None:
    """The batcher waits only for images it knows are being decoded: one request at a time
    never sits out MAX_WAIT_MS (a full second here) in the queue."""
    s = serve(MODEL_URI=str(upstream["export"]), MAX_WAIT_MS="1000")
    data = image_bytes("JPEG", size=(96, 64))
    for i in range(4):
        files = {"file": (f"{i}.jpg", data, "image/jpeg")}
        assert httpx.post(s.url + "/predict", files=files, timeout=60).status_code == 200
    metrics = httpx.get(s.url + "/metrics").text
    assert _metric(metrics, "carinspect_batch_size_count") == 4
    assert _metric(metrics, "carinspect_queue_seconds_sum") < 0.5  # 4 s if each had waited


def test_startup_heap_is_frozen(upstream: dict[str, Path]) -> None:
    """What start-up built is out of the collector's sight, so a full collection under load
    walks only what requests allocated (not ~100,000 objects with the GIL held)."""
    from fastapi.testclient import TestClient

    from carinspect.serving.app import create_app

    try:
        with TestClient(create_app(ServeSettings(MODEL_URI=str(upstream["export"])))) as client:
            assert client.get("/readyz").status_code == 200
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


BAD_UPLOADS: list[tuple[str, bytes, str, int, str]] = [
    ("empty", b"", "image/jpeg", 400, "zero bytes"),
    ("plain text", b"hello, I am not a car\n", "text/plain", 415, "not_an_image"),
    ("html", b"<!doctype html><html><body>hi</body></html>", "text/html", 415, "not_an_image"),
    ("text sent as image/png", b"GIF? no, text", "image/png", 415, "not_an_image"),
    ("truncated jpeg", image_bytes("JPEG", size=(64, 64))[:300], "image/jpeg", 422, "truncated"),
    ("truncated png", image_bytes("PNG", size=(64, 64))[:200], "image/png", 422, "truncated"),
    ("jpeg header then garbage", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "image/jpeg", 422, "corrupt"),
    ("png pixel bomb", pixel_bomb_png(), "image/png", 422, "pixel_bomb"),
    ("png with 4 of its 8 rows", png_rows(8, 8, 4), "image/png", 422, "truncated: IDAT holds 4 of the 8 rows"),
    ("png with a zeroed IEND CRC", png_rows(8, 8, 4)[:-4] + b"\0" * 4, "image/png", 422, "corrupt: chunk IEND"),
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "image/svg+xml", 415, "not_an_image"),
    ("pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "application/pdf", 415, "not_an_image"),
    ("zip", b"PK\x03\x04" + b"\x00" * 60, "application/zip", 415, "not_an_image"),
    ("ico", image_bytes("ICO", size=(32, 32)), "image/x-icon", 415, "unsupported_format"),
    ("over the upload limit", b"\xff\xd8" + b"\x00" * (1024 * 1024 + 10), "image/jpeg", 413, "exceeds"),
]  # fmt: skip


def test_bad_uploads_get_4xx_and_the_server_stays_up(
    serve: Callable[..., Server], upstream: dict[str, Path]
) -> None:
    s = serve(MODEL_URI=str(upstream["export"]), MAX_UPLOAD_MB="1", MAX_BATCH_FILES="3")
    seen: dict[str, int] = {}
    for name, data, ctype, status, fragment in BAD_UPLOADS:
        r = httpx.post(s.url + "/predict", files={"file": ("x", data, ctype)}, timeout=30)
        seen[name] = r.status_code
        assert r.status_code == status, (name, r.status_code, r.text)
        assert fragment in r.json()["detail"], (name, r.text)
        assert httpx.get(s.url + "/healthz").status_code == 200, name

    requests: list[tuple[str, Callable[[], httpx.Response], int, str]] = [
        ("wrong field name", lambda: httpx.post(s.url + "/predict", files={"image": ("a.jpg", image_bytes(), "image/jpeg")}), 422, "body.file: Field required"),
        ("no file at all", lambda: httpx.post(s.url + "/predict"), 422, "Field required"),
        ("json instead of multipart", lambda: httpx.post(s.url + "/predict", json={"file": "x"}), 422, "file"),
        ("two files to /predict", lambda: httpx.post(s.url + "/predict", files=[("file", ("a.jpg", image_bytes(), "image/jpeg"))] * 2), 422, "send several to /predict/batch"),
        ("truncated multipart", lambda: httpx.post(s.url + "/predict", content=b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' + image_bytes(), headers={"content-type": "multipart/form-data; boundary=b"}), 400, "multipart body: part 1 (file): no closing boundary"),
        ("chunked body over the limit", lambda: httpx.post(s.url + "/predict", content=_chunked_multipart(3 * 1024 * 1024), headers={"content-type": "multipart/form-data; boundary=b0undary"}), 413, "exceeds"),
        ("content-length over the limit", lambda: httpx.post(s.url + "/predict/batch", content=b"x" * (4 * 1024 * 1024), headers={"content-type": "multipart/form-data; boundary=b"}), 413, "exceeds"),
        ("too many files", lambda: httpx.post(s.url + "/predict/batch", files=[("files", (f"{i}.jpg", image_bytes(), "image/jpeg")) for i in range(4)]), 413, "at most 3"),
        ("url body not json", lambda: httpx.post(s.url + "/predict/url", content=b"{", headers={"content-type": "application/json"}), 422, "json"),
        ("unknown route", lambda: httpx.get(s.url + "/predictions"), 404, "Not Found"),
        ("wrong method", lambda: httpx.get(s.url + "/predict"), 405, "Method Not Allowed"),
    ]  # fmt: skip
    for name, send, status, fragment in requests:
        r = send()
        seen[name] = r.status_code
        assert r.status_code == status, (name, r.status_code, r.text)
        assert fragment.lower() in r.json()["detail"].lower(), (name, r.text)
        assert httpx.get(s.url + "/healthz").status_code == 200, name
    assert len(seen) >= 15 and all(400 <= code < 500 for code in seen.values())
    assert s.proc.poll() is None
    ok = httpx.post(s.url + "/predict", files={"file": ("a.jpg", image_bytes(), "image/jpeg")})
    assert ok.status_code == 200
    # one bad file in a batch: its own error entry, the others answered (the seed's behaviour)
    files = [("files", ("ok.jpg", image_bytes(), "image/jpeg")),
             ("files", ("bad.txt", b"nope", "text/plain")),
             ("files", ("ok2.png", image_bytes("PNG"), "image/png"))]  # fmt: skip
    batch = httpx.post(s.url + "/predict/batch", files=files)
    assert batch.status_code == 200, batch.text
    answers = batch.json()["predictions"]
    assert batch.json()["errors"] == 1
    assert [a["filename"] for a in answers] == ["ok.jpg", "bad.txt", "ok2.png"]
    assert answers[1]["status"] == 415 and "bad.txt: not_an_image" in answers[1]["detail"]
    assert "label" in answers[0] and "label" in answers[2]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("rgba png", image_bytes("PNG", mode="RGBA")),
        ("cmyk jpeg", image_bytes("JPEG", mode="CMYK")),
        ("16-bit png", sixteen_bit_png()),
        ("grayscale png", image_bytes("PNG", mode="L")),
        ("palette gif", image_bytes("GIF", mode="P")),
        ("animated gif", animated_gif()),
        ("exif-rotated jpeg", exif_rotated_jpeg()),
        ("webp", image_bytes("WEBP")),
        ("bmp", image_bytes("BMP")),
        ("tiff", image_bytes("TIFF")),
    ],
)
def test_every_colour_mode_and_format_is_handled(name: str, data: bytes, served: Server) -> None:
    r = httpx.post(
        served.url + "/predict", files={"file": (name, data, "application/octet-stream")}
    )
    assert r.status_code == 200, (name, r.text)


def test_api_keys(serve: Callable[..., Server], upstream: dict[str, Path]) -> None:
    s = serve(MODEL_URI=str(upstream["export"]), API_KEYS="first-key, second-key")
    files = {"file": ("a.jpg", image_bytes(), "image/jpeg")}
    missing = httpx.post(s.url + "/predict", files=files)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(s.url + "/predict", files=files, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]
    basic = httpx.post(
        s.url + "/predict", files=files, headers={"Authorization": "Basic second-key"}
    )
    assert basic.status_code == 401
    good = httpx.post(
        s.url + "/predict", files=files, headers={"Authorization": "Bearer second-key"}
    )
    assert good.status_code == 200
    others = {
        "/predict/batch": {"files": [("files", ("a.jpg", image_bytes(), "image/jpeg"))]},
        "/predict/url": {"json": {"url": "http://example.invalid/a.jpg"}},
    }
    for path, body in others.items():
        refused = httpx.post(s.url + path, **body)  # type: ignore[arg-type]
        assert refused.status_code == 401 and "API key" in refused.json()["detail"], path
    batch = httpx.post(
        s.url + "/predict/batch",
        headers={"Authorization": "bearer first-key"},
        **others["/predict/batch"],
    )  # type: ignore[arg-type]
    assert batch.status_code == 200, batch.text
    for path in ("/healthz", "/readyz", "/model", "/metrics"):
        assert httpx.get(s.url + path).status_code == 200, path
