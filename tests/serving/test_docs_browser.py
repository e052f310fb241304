"""/docs and /redoc in a real headless browser (Debian's chromium driven by Playwright), offline.

Every request the page makes to anything but the server is refused and recorded, as on an
air-gapped cluster: the pages must render and "Try it out" must upload real image files, one on
/predict and two on /predict/batch, and show the answers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, offline_page
from tests.serving.conftest import image_bytes


@pytest.fixture()
def page(browser: Any, served: Server) -> Iterator[tuple[Any, list[str]]]:
    """A page that may only talk to the server; what else it asked for is listed."""
    with offline_page(browser, served.url) as opened:
        yield opened


def _images(tmp_path: Path) -> list[Path]:
    paths = []
    for i, size in enumerate([(64, 48), (80, 60)]):
        path = tmp_path / f"car{i}.jpg"
        path.write_bytes(image_bytes(size=size))
        paths.append(path)
    return paths


def _response_json(op: Any) -> dict[str, Any]:
    row = op.locator(".live-responses-table tr.response").first
    row.wait_for()
    status = row.locator(".response-col_status").inner_text()
    body = row.locator(".response-col_description pre").first.inner_text()
    assert status.strip() == "200", body
    data: dict[str, Any] = json.loads(body)
    return data


def test_swagger_ui_uploads_one_and_several_images(
    page: tuple[Any, list[str]], served: Server, tmp_path: Path
) -> None:
    p, outside = page
    first, second = _images(tmp_path)
    p.goto(served.url + "/docs")
    p.locator(".swagger-ui .info .title").wait_for()
    assert "carinspect" in p.locator(".swagger-ui .info .title").inner_text()

    one = p.locator("#operations-predict-predict_predict_post")
    one.locator(".opblock-summary").click()
    one.locator("button.try-out__btn").click()
    one.locator("input[type=file]").set_input_files(str(first))
    one.locator("button.execute").click()
    answer = _response_json(one)
    assert answer["filename"] == first.name and set(answer["probabilities"]) == {"clean", "dirty"}

    batch = p.locator("#operations-predict-predict_batch_predict_batch_post")
    batch.locator(".opblock-summary").click()
    batch.locator("button.try-out__btn").click()
    pickers = batch.locator("input[type=file]")  # file pickers, not text boxes
    pickers.first.wait_for()
    add = batch.get_by_role("button", name=re.compile(r"^Add .*item$"))
    for _ in range(3):
        if pickers.count() >= 2:
            break
        add.click()
    assert pickers.count() == 2
    pickers.nth(0).set_input_files(str(first))
    pickers.nth(1).set_input_files(str(second))
    batch.locator("button.execute").click()
    answers = _response_json(batch)["predictions"]
    assert [a["filename"] for a in answers] == [first.name, second.name]
    assert outside == []  # nothing was asked of the internet


def test_redoc_renders_offline(page: tuple[Any, list[str]], served: Server) -> None:
    p, outside = page
    p.goto(served.url + "/redoc")
    p.get_by_text("/predict/batch").first.wait_for()
    assert "carinspect" in p.locator("h1").first.inner_text()
    # ReDoc's "by Redocly" footer image is the one thing it fetches; it hides itself when the
    # fetch fails (an onError in redoc.standalone.js), so the page is whole without it
    assert set(outside) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}


def test_curl_sends_several_files_to_the_batch_route(served: Server, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    first, second = _images(tmp_path)
    out = subprocess.run(
        [curl, "-sS", "-F", f"files=@{first}", "-F", f"files=@{second}",
         served.url + "/predict/batch"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    answers = json.loads(out)["predictions"]
    assert [a["filename"] for a in answers] == [first.name, second.name]


def test_openapi_marks_file_arrays_as_binary(served: Server) -> None:
    import httpx

    spec = httpx.get(served.url + "/openapi.json").json()
    for path, field in (("/predict", "file"), ("/predict/batch", "files")):
        body = spec["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        schema = body["content"]["multipart/form-data"]["schema"]
        assert schema["required"] == [field]
        upload = schema["properties"][field]
        if field == "files":
            assert upload["type"] == "array"
            upload = upload["items"]
        assert {k: v for k, v in upload.items() if k != "title"} == {
            "type": "string",
            "format": "binary",
            "contentMediaType": "application/octet-stream",
        }
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
