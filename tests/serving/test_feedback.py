"""FEEDBACK_DIR through the real server: photos kept by content hash with their answers."""

import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import httpx

from tests.conftest import Server
from tests.serving.conftest import image_bytes


def _counter(server: Server, name: str) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics").text
    found = re.findall("^" + name + r'_total(?:\{reason="(\w+)"\})? (\S+)$', text, re.M)
    return {m[0]: float(m[1]) for m in found}


def _saved(server: Server, want: int, timeout: float = 20) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _counter(server, "carinspect_feedback_saved").get("", 0.0)
        if got >= want:
            return got
        time.sleep(0.1)
    raise AssertionError(
        f"{want} photos not kept in {timeout} s; server log:\n{server.log.read_text()}"
    )


def _photos(n: int) -> list[bytes]:
    return [image_bytes("JPEG", size=(64 + i, 48)) for i in range(n)]


def test_kept_photos_carry_their_hash_version_and_answer(
    upstream: dict[str, Path], serve: Callable[..., Server], tmp_path: Path
) -> None:
    log = tmp_path / "feedback"
    s = serve(MODEL_URI=str(upstream["export"]), FEEDBACK_DIR=str(log), FEEDBACK_PERCENT="100")
    photos = _photos(3)
    answers = []
    with httpx.Client(timeout=30) as http:
        for data in [*photos, photos[0]]:  # the first one twice: kept once
            r = http.post(s.url + "/predict", files={"file": ("car.jpg", data)})
            assert r.status_code == 200, r.text
            answers.append(r.json())
    _saved(s, 3)
    for data, got in zip(photos, answers, strict=False):
        sha = hashlib.sha256(data).hexdigest()
        assert (log / sha[:2] / f"{sha}.jpg").read_bytes() == data
        record = json.loads((log / sha[:2] / f"{sha}.json").read_text())
        assert record["sha256"] == sha and record["bytes"] == len(data)
        assert (
            record["labels"] == {"label": got["label"]}
            and record["answer"]["label"] == got["label"]
        )
        assert record["model"]["version"] == got["model"]["version"]
        assert record["classes"] == {"label": sorted(got["probabilities"])}
    assert _counter(s, "carinspect_feedback_skipped").get("duplicate", 0) >= 1
    assert not list(log.rglob(".tmp-*"))  # nothing half-written left behind


def test_the_size_cap_stops_sampling_with_one_warning(
    upstream: dict[str, Path], serve: Callable[..., Server], tmp_path: Path
) -> None:
    log = tmp_path / "feedback"
    s = serve(
        MODEL_URI=str(upstream["export"]), FEEDBACK_DIR=str(log), FEEDBACK_PERCENT="100",
        FEEDBACK_MAX_MB=str(10_000 / 2**20),  # room for about two photos and their records
    )  # fmt: skip
    with httpx.Client(timeout=30) as http:
        for data in _photos(8):
            assert http.post(s.url + "/predict", files={"file": ("c.jpg", data)}).status_code == 200
    deadline = time.monotonic() + 20
    while "FEEDBACK_MAX_MB" not in s.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    kept = len(list(log.rglob("*.jpg")))
    assert 1 <= kept < 8
    assert sum(p.stat().st_size for p in log.rglob("*") if p.is_file()) <= 10_000
    assert s.log.read_text().count("feedback sampling is off") == 1


def test_an_unwritable_feedback_dir_warns_once_and_serving_goes_on(
    upstream: dict[str, Path], serve: Callable[..., Server], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    s = serve(MODEL_URI=str(upstream["export"]), FEEDBACK_DIR=str(blocker / "feedback"))
    with httpx.Client(timeout=30) as http:
        for data in _photos(3):
            assert http.post(s.url + "/predict", files={"file": ("c.jpg", data)}).status_code == 200
    text = s.log.read_text()
    assert text.count("feedback sampling is off") == 1, text
    assert "cannot be written" in text and " ERROR " not in text


def test_an_s3_prefix_keeps_photos_as_objects(
    upstream: dict[str, Path], serve: Callable[..., Server], s3_endpoint: str
) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="fleet-feedback")
    s = serve(
        MODEL_URI=str(upstream["export"]), FEEDBACK_DIR="s3://fleet-feedback/served",
        FEEDBACK_PERCENT="100",
    )  # fmt: skip
    data = _photos(1)[0]
    assert (
        httpx.post(s.url + "/predict", files={"file": ("c.jpg", data)}, timeout=30).status_code
        == 200
    )
    _saved(s, 1)
    sha = hashlib.sha256(data).hexdigest()
    body = s3.get_object(Bucket="fleet-feedback", Key=f"served/{sha[:2]}/{sha}.jpg")["Body"].read()
    assert body == data
    record = s3.get_object(Bucket="fleet-feedback", Key=f"served/{sha[:2]}/{sha}.json")[
        "Body"
    ].read()
    assert json.loads(record)["sha256"] == sha


def test_the_policy_keeps_photos_with_their_reasons_within_the_class_budget(
    upstream: dict[str, Path], serve: Callable[..., Server], tmp_path: Path
) -> None:
    log = tmp_path / "feedback"
    s = serve(
        MODEL_URI=str(upstream["export"]), FEEDBACK_DIR=str(log), FEEDBACK_PERCENT="0",
        FEEDBACK_MARGIN="1.0",  # every answer is a close enough call
        FEEDBACK_PER_CLASS_PER_HOUR="2",
    )  # fmt: skip
    answers = []
    with httpx.Client(timeout=30) as http:
        for data in _photos(8):
            r = http.post(s.url + "/predict", files={"file": ("c.jpg", data)})
            assert r.status_code == 200, r.text
            answers.append(r.json()["label"])
    classes = set(answers)
    _saved(s, 2 * len(classes))
    time.sleep(0.5)
    records = [json.loads(p.read_text()) for p in log.rglob("*.json")]
    assert len(records) == 2 * len(classes)  # two per answered class this hour
    for record in records:
        (reason,) = record["reasons"]
        assert reason["kind"] == "margin" and reason["task"] == "label"
        assert record["score"] == reason["score"] and 0.0 <= record["score"] <= 1.0
    assert _counter(s, "carinspect_feedback_skipped")["budget_class"] == 8 - len(records)
    assert _counter(s, "carinspect_feedback_kept")["margin"] == len(records)
