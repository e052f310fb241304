"""The whole loop through real processes: serve with the policy -> kept photos with reasons ->
`review push` into Label Studio -> annotations through its API -> `review pull` (a DVC revision,
a share held out as the golden set) -> `dvc repro` -> a challenger -> the same-photos gate ->
promote.
"""

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from carinspect.config import DemoConfig
from carinspect.contracts.feedback import parse_record
from carinspect.data.decoding.fingerprint import sha256_bytes
from carinspect.data.intake.demo import demo_files
from tests.conftest import VENV_BIN, Server
from tests.e2e.project import DVC, make_project, sh
from tests.review.conftest import LabelStudioServer

CARINSPECT = str(VENV_BIN / "carinspect")


def _lenient(params: dict) -> None:
    params["promote"]["floor"] = 0.0  # one-epoch models: the gate's figures, not their size,
    params["promote"]["tolerance"] = 1.0  # are what this test checks


@pytest.mark.slow
def test_served_photos_reviewed_in_label_studio_come_back_through_the_same_photos_gate(
    tmp_path: Path,
    serve: Callable[..., Server],
    label_studio: LabelStudioServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = make_project(tmp_path, _lenient)
    sh(project, DVC, "repro")
    sh(project, CARINSPECT, "promote")
    first = json.loads((project / "models" / "registered.json").read_text())
    log = label_studio.root / "loop-feedback"  # Label Studio serves the photos from here
    s = serve(
        MODEL_URI="models:/carinspect@champion", MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}",
        FEEDBACK_DIR=str(log), FEEDBACK_PERCENT="0", FEEDBACK_MARGIN="1.0",  # every answer is close
    )  # fmt: skip
    served = demo_files(DemoConfig(per_class=8, seed=21, broken=False))
    truth = {sha256_bytes(f.make()): f.label for f in served}
    with httpx.Client(timeout=30) as http:
        for f in served:
            assert (
                http.post(s.url + "/predict", files={"file": (f.name, f.make())}).status_code == 200
            )
    deadline = time.monotonic() + 60
    while len(list(log.rglob("*.json"))) < len(served):
        assert time.monotonic() < deadline, s.log.read_text()[-3000:]
        time.sleep(0.2)
    records = [parse_record(p.read_bytes(), str(p)) for p in log.rglob("*.json")]
    assert {r.reasons[0].kind for r in records} == {"margin"}  # kept by the policy, with why

    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)  # what `sh` runs the CLI with
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(label_studio.root))
    pushed = sh(project, CARINSPECT, "review", "push", "--log", str(log), "--project", "loop")
    assert f"{len(served)} task(s) added" in pushed
    with label_studio.session() as http:  # the reviewers, through Label Studio's API
        pid = http.get("/api/projects", params={"title": "loop"}).json()["results"][0]["id"]
        tasks = http.get("/api/tasks", params={"project": pid, "page_size": 100}).json()["tasks"]
        for task in tasks:
            label = truth[task["data"]["sha256"]]
            result = [{"from_name": "label", "to_name": "image", "type": "choices",
                       "value": {"choices": [label]}}]  # fmt: skip
            http.post(f"/api/tasks/{task['id']}/annotations", json={"result": result})
    pulled = sh(project, CARINSPECT, "review", "pull", "--log", str(log), "--project", "loop",
                "--golden-share", "0.3")  # fmt: skip
    assert "commit data/feedback/photos.dvc" in pulled
    golden = list((project / "data" / "golden" / "photos").rglob("*.*"))
    fed = list((project / "data" / "feedback" / "photos").rglob("*.*"))
    assert golden and fed and len(golden) + len(fed) == len(served)  # one side each, none lost
    assert {p.stem for p in golden}.isdisjoint({p.stem for p in fed})

    again = sh(project, DVC, "repro")  # the feedback revision re-runs from ingest
    assert "Running stage 'ingest'" in again and "Running stage 'register'" in again
    second = json.loads((project / "models" / "registered.json").read_text())
    assert int(second["version"]) == int(first["version"]) + 1
    promoted = sh(project, CARINSPECT, "promote")
    gate = json.loads(promoted.strip().splitlines()[-1])
    judged = gate["same_photos"]
    assert judged["parts"]["golden set"] == len(golden)
    assert judged["candidate"]["version"] == second["version"]
    assert judged["champion"]["version"] == first["version"]
    assert judged["candidate"]["photos"] == judged["champion"]["photos"] == judged["photos"]
    status = sh(project, CARINSPECT, "status")
    assert f"champion: version {second['version']}" in status
    assert f"same-photos gate: passed on {judged['photos']} photos" in status
