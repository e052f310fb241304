"""The loop after promotion, for real: serve -> keep photos -> label -> dvc repro -> shadow.

Slow tier: two `dvc repro` runs of the main job (tiny model) around a served champion that
keeps its photos (FEEDBACK_DIR) and shadows the challenger alias (SHADOW).
"""

import csv
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from carinspect.config import DemoConfig
from carinspect.data.decoding.fingerprint import sha256_bytes
from carinspect.data.intake.demo import demo_files
from carinspect.data.intake.manifest import read_manifest
from tests.conftest import VENV_BIN, Server
from tests.e2e.project import DVC, make_project, sh

CARINSPECT = str(VENV_BIN / "carinspect")


def _floor_zero(params: dict) -> None:
    params["promote"]["floor"] = 0.0  # a one-epoch model is promoted anyway


def _wait(what: str, check: Callable[[], bool], server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what} not seen in {timeout} s:\n{server.log.read_text()[-3000:]}"
            )
        time.sleep(0.2)


@pytest.mark.slow
def test_served_photos_labelled_and_retrained_come_back_as_the_shadowed_challenger(
    tmp_path: Path, serve: Callable[..., Server]
) -> None:
    project = make_project(tmp_path, _floor_zero)
    sh(project, DVC, "repro")
    first = json.loads((project / "models" / "registered.json").read_text())
    sh(project, CARINSPECT, "promote")
    tracking = f"sqlite:///{project / 'mlflow.db'}"
    log = tmp_path / "feedback-log"
    s = serve(
        MODEL_URI="models:/carinspect@champion", MLFLOW_TRACKING_URI=tracking,
        FEEDBACK_DIR=str(log), FEEDBACK_PERCENT="100", SHADOW="challenger", POLL_SECONDS="1",
    )  # fmt: skip

    # the fleet's photos: a new draw of the demo generator, answered and kept
    served = demo_files(DemoConfig(per_class=6, seed=11, broken=False))
    with httpx.Client(timeout=30) as http:
        for f in served:
            r = http.post(s.url + "/predict", files={"file": (f.name, f.make())})
            assert r.status_code == 200, r.text
            assert r.json()["model"]["version"] == first["version"]
    _wait("the kept photos", lambda: len(list(log.rglob("*.json"))) == len(served), s)

    # a reviewer labels them (here: the generator's truth) and imports the labels
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sha256", "label"])
        writer.writerows((sha256_bytes(f.make()), f.label) for f in served)
    out = sh(project, CARINSPECT, "feedback", "import", str(labels), "--log", str(log))
    assert f"{len(served)} added, 0 relabelled, 0 unchanged" in out
    assert "commit data/feedback/photos.dvc" in out
    assert (project / "data" / "feedback" / "photos.dvc").is_file()

    # the dataset revision re-runs the pipeline from ingest and registers the new challenger
    again = sh(project, DVC, "repro")
    assert "Running stage 'ingest'" in again and "Running stage 'register'" in again
    rows = read_manifest(project / "data" / "ingest" / "manifest.csv")
    fed = {r.sha256 for r in rows if r.source.startswith("data/feedback/photos/")}
    assert fed == {sha256_bytes(f.make()) for f in served}
    second = json.loads((project / "models" / "registered.json").read_text())
    assert int(second["version"]) == int(first["version"]) + 1

    # the running server noticed the challenger move and shadows it; the champion still answers
    def shadowing() -> bool:
        status = httpx.get(s.url + "/model").json()["second"]
        return bool(status["version"] == second["version"])

    _wait("the shadow on the new challenger", shadowing, s)
    with httpx.Client(timeout=30) as http:
        for f in served[:4]:
            r = http.post(s.url + "/predict", files={"file": (f.name, f.make())})
            assert r.status_code == 200 and r.json()["model"]["version"] == first["version"]

    def counted() -> bool:
        text = httpx.get(s.url + "/metrics").text
        return (
            sum(
                float(v)
                for v in re.findall(r"^carinspect_shadow_agreement_total\{.*\} (\S+)$", text, re.M)
            )
            >= 4
        )

    _wait("the shadow agreement", counted, s)
    assert (
        f'carinspect_second_model_version{{alias="challenger",mode="shadow",version="{second["version"]}"}} 1.0'
        in httpx.get(s.url + "/metrics").text
    )
