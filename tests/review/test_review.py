"""`carinspect review push/pull` against a real Label Studio, annotated through its API."""

import csv
import hashlib
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
import yaml

from carinspect.config import DemoConfig
from carinspect.data.decoding.images import ImageLimits
from carinspect.data.intake.demo import demo_files
from carinspect.errors import InputError
from carinspect.review.client import LabelStudio, ReviewError
from carinspect.review.loop import pull, push
from carinspect.review.tasks import label_config, reviewed
from carinspect.serving.feedback import FeedbackLog
from carinspect.serving.inference import answer, pixels_for
from carinspect.serving.loaded import ModelRef
from carinspect.serving.metrics import ServingMetrics
from carinspect.serving.observers import AnsweredPhoto
from carinspect.serving.opening import open_model
from carinspect.serving.settings import ServeSettings
from tests.conftest import VENV_BIN, Prepared, free_port, tiny_params
from tests.review.conftest import LabelStudioServer
from tests.stages.test_audit import flip_labels


def make_log(log: Path, export: Path, per_class: int = 4) -> dict[str, str]:
    """A feedback log as `carinspect serve` keeps it (every photo, with reasons); sha -> class."""
    settings = ServeSettings(FEEDBACK_DIR=str(log), FEEDBACK_PERCENT=100)
    model = open_model(ModelRef.parse(str(export)), None, export, settings)
    kept = FeedbackLog(settings, ServingMetrics())
    kept.start()
    truth = {}
    for i, f in enumerate(demo_files(DemoConfig(per_class=per_class, seed=11, broken=False))):
        data = f.make()
        scores = model.infer(pixels_for(data, model, ImageLimits())[None])[0]
        kept.observe(AnsweredPhoto(data, f"{i}.png", model, scores, None, answer(model, scores)))
        truth[hashlib.sha256(data).hexdigest()] = f.label
    kept.stop()
    return truth


@pytest.fixture
def log(label_studio: LabelStudioServer, upstream: dict[str, Path], request: pytest.FixtureRequest
        ) -> tuple[Path, dict[str, str]]:  # fmt: skip
    folder = label_studio.root / request.node.name
    return folder, make_log(folder, upstream["export"])


def _annotate(http: httpx.Client, task: int, label: str | None) -> None:
    """One reviewer's annotation (None: the reviewer skipped the task)."""
    body = (
        {"result": [], "was_cancelled": True}
        if label is None
        else {"result": [{"from_name": "label", "to_name": "image", "type": "choices",
                          "value": {"choices": [label]}}]}
    )  # fmt: skip
    http.post(f"/api/tasks/{task}/annotations", json=body).raise_for_status()


def _tasks(http: httpx.Client, project: int) -> list[dict]:
    return http.get("/api/tasks", params={"project": project, "page_size": 100}).json()["tasks"]


@pytest.mark.slow
def test_push_orders_by_score_prefills_the_answer_and_is_idempotent(
    label_studio: LabelStudioServer, log: tuple[Path, dict[str, str]]
) -> None:
    folder, truth = log
    with LabelStudio(label_studio.url, label_studio.token) as ls:
        first = push(ls, str(folder), "push", label_studio.root)
        again = push(ls, str(folder), "push", label_studio.root)
    assert (first.added, first.already) == (len(truth), 0)
    assert (again.added, again.already) == (0, len(truth))  # a photo pushed twice is one task
    with label_studio.session() as http:
        tasks = _tasks(http, first.project)
        project = http.get(f"/api/projects/{first.project}").json()
        assert {t["data"]["sha256"] for t in tasks} == set(truth)
        scores = [t["data"]["score"] for t in sorted(tasks, key=lambda t: t["id"])]
        assert scores == sorted(scores, reverse=True)  # most worth a look first
        choices = [c.get("value") for c in ET.fromstring(project["label_config"]).iter("Choice")]
        assert choices == ["clean", "dirty"]
        task = http.get(f"/api/tasks/{tasks[0]['id']}").json()
        (prediction,) = task["predictions"]
        assert prediction["model_version"].endswith("v?") or " v" in prediction["model_version"]
        assert prediction["result"][0]["value"]["choices"][0] in ("clean", "dirty")
        assert tasks[0]["data"]["why"].startswith(("margin", "random", "uncertain"))
        photo = http.get(tasks[0]["data"]["image"])  # the storage connection serves the photo
        assert photo.status_code == 200
        sha = tasks[0]["data"]["sha256"]
        assert hashlib.sha256(photo.content).hexdigest() == sha


@pytest.mark.slow
def test_pull_imports_finished_annotations_and_ignores_skipped_tasks(
    label_studio: LabelStudioServer, log: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    folder, truth = log
    with LabelStudio(label_studio.url, label_studio.token) as ls:
        pid = push(ls, str(folder), "pull", label_studio.root).project
        with label_studio.session() as http:
            tasks = _tasks(http, pid)
            for task in tasks[:5]:
                _annotate(http, task["id"], truth[task["data"]["sha256"]])
            _annotate(http, tasks[5]["id"], None)  # skipped: not a label
        result = pull(ls, "pull", str(folder), tmp_path / "feedback", dvc=False)
    assert result.added == 5 and sum(result.classes.values()) == 5
    for task in tasks[:5]:
        sha = task["data"]["sha256"]
        assert len(list((tmp_path / "feedback/photos" / truth[sha]).glob(f"{sha}.*"))) == 1
    assert not list((tmp_path / "feedback/photos").rglob(f"{tasks[5]['data']['sha256']}*"))


@pytest.mark.slow
def test_reviewers_who_disagree_are_refused_unless_a_majority_decides(
    label_studio: LabelStudioServer, log: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    folder, _ = log
    dataset = tmp_path / "feedback"
    with LabelStudio(label_studio.url, label_studio.token) as ls:
        pid = push(ls, str(folder), "disagree", label_studio.root).project
        with label_studio.session() as http:
            task = _tasks(http, pid)[0]
            for label in ("clean", "dirty"):  # two reviewers, two answers
                _annotate(http, task["id"], label)
            with pytest.raises(ReviewError, match=rf"task {task['id']} \(photo \w+\): reviewers "
                               r"disagree on label: 'clean' \(1\) vs 'dirty' \(1\)"):  # fmt: skip
                pull(ls, "disagree", str(folder), dataset, dvc=False)
            with pytest.raises(ReviewError, match="reviewers disagree"):  # a tie stays refused
                pull(ls, "disagree", str(folder), dataset, resolve="majority", dvc=False)
            assert not dataset.exists()  # nothing half-written
            _annotate(http, task["id"], "dirty")  # a third reviewer: 2 to 1
        result = pull(ls, "disagree", str(folder), dataset, resolve="majority", dvc=False)
    assert result.classes == {"dirty": 1}


@pytest.mark.slow
def test_a_label_the_model_lacks_and_a_missing_photo_are_named(
    label_studio: LabelStudioServer, log: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    folder, _ = log
    dataset = tmp_path / "feedback"
    with LabelStudio(label_studio.url, label_studio.token) as ls:
        pid = push(ls, str(folder), "bad labels", label_studio.root).project
        with label_studio.session() as http:
            project = http.get(f"/api/projects/{pid}").json()
            wider = project["label_config"].replace(
                '<Choice value="dirty"/>', '<Choice value="dirty"/><Choice value="muddy"/>'
            )
            http.patch(f"/api/projects/{pid}", json={"label_config": wider}).raise_for_status()
            first, second = _tasks(http, pid)[:2]
            _annotate(http, first["id"], "muddy")  # a reviewer added a class the model lacks
            _annotate(http, second["id"], "clean")
        with pytest.raises(InputError, match=rf"task {first['id']}: label 'muddy' is not one of"):
            pull(ls, "bad labels", str(folder), dataset, dvc=False)
        with label_studio.session() as http:
            http.delete(f"/api/tasks/{first['id']}").raise_for_status()
        sha = second["data"]["sha256"]
        (photo,) = (folder / sha[:2]).glob(f"{sha}.*[!n]")  # the photo, not its .json record
        photo.unlink()  # the log lost the photo
        with pytest.raises(InputError, match=rf"task {second['id']}: hash {sha[:12]} is not in"):
            pull(ls, "bad labels", str(folder), dataset, dvc=False)
    assert not dataset.exists()


@pytest.mark.slow
def test_a_refused_token_and_a_folder_label_studio_cannot_serve_are_named(
    label_studio: LabelStudioServer, log: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    folder, _ = log
    with (
        LabelStudio(label_studio.url, "a.b.c") as ls,
        pytest.raises(
            ReviewError, match=rf"{label_studio.url}: the personal access token was refused"
        ),
    ):
        push(ls, str(folder), "refused", label_studio.root)
    with (
        LabelStudio(label_studio.url, "0" * 40) as ls,
        pytest.raises(ReviewError, match=rf"{label_studio.url}: the token was refused"),
    ):
        push(ls, str(folder), "refused", label_studio.root)
    outside = tmp_path / "log"
    shutil.copytree(folder, outside)
    with (
        LabelStudio(label_studio.url, label_studio.token) as ls,
        pytest.raises(ReviewError, match="not under Label Studio's LOCAL_FILES_DOCUMENT_ROOT"),
    ):
        push(ls, str(outside), "outside", label_studio.root)


@pytest.mark.slow
def test_the_cli_pushes_and_pulls(
    label_studio: LabelStudioServer, log: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    folder, truth = log
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.root)}  # fmt: skip
    cli = str(VENV_BIN / "carinspect")
    done = subprocess.run(
        [cli, "review", "push", "--log", str(folder), "--project", "cli"], env={**_env(), **env},
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{len(truth)} task(s) added to project 'cli' (0 already there)" in done.stdout
    with label_studio.session() as http:
        pid = http.get("/api/projects", params={"title": "cli"}).json()["results"][0]["id"]
        task = _tasks(http, pid)[0]
        _annotate(http, task["id"], truth[task["data"]["sha256"]])
    done = subprocess.run(
        [cli, "review", "pull", "--log", str(folder), "--project", "cli", "--out", "fb"],
        env={**_env(), **env}, capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 added, 0 relabelled, 0 unchanged: fb/photos now holds")


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_an_unreachable_label_studio_is_one_line_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        LabelStudio(url, "a.b.c") as ls,
        pytest.raises(ReviewError, match=rf"^{url}: Label Studio is not reachable"),
    ):
        ls.project("anything")
    done = subprocess.run(
        [str(VENV_BIN / "carinspect"), "review", "pull", "--log", str(tmp_path), "--url", url,
         "--token", "a.b.c", "--out", "fb"], capture_output=True, text=True, cwd=tmp_path,
        check=False,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"{url}: Label Studio is not reachable" in done.stderr


def test_the_labelling_config_names_every_task_and_class() -> None:
    config = ET.fromstring(label_config({"cleanliness": ["clean", "dirty"], "damage": ["dent"]}))
    choices = {c.get("name"): [x.get("value") for x in c.iter("Choice")]
               for c in config.iter("Choices")}  # fmt: skip
    assert choices == {"cleanliness": ["clean", "dirty"], "damage": ["dent"]}
    assert all(c.get("choice") == "single" for c in config.iter("Choices"))


def test_skipped_and_unfinished_tasks_give_no_label() -> None:
    def task(i: int, *labels: str | None) -> dict:
        notes = [{"was_cancelled": label is None,
                  "result": [] if label is None else
                  [{"from_name": "label", "value": {"choices": [label]}}]} for label in labels]  # fmt: skip
        return {"id": i, "data": {"sha256": f"{i:064x}"}, "annotations": notes}

    got = reviewed([task(1, "dirty"), task(2), task(3, None), task(4, None, "clean")])
    assert [(r.where, r.labels) for r in got] == [("task 1", {"label": "dirty"}),
                                                  ("task 4", {"label": "clean"})]  # fmt: skip
    with pytest.raises(ReviewError, match=r"task 5 \(photo 0{12}\): reviewers disagree"):
        reviewed([task(5, "dirty", "clean", "clean", "dirty")], resolve="majority")
    assert reviewed([task(6, "dirty", "clean", "clean")], resolve="majority")[0].labels == {
        "label": "clean"
    }


@pytest.mark.slow
def test_the_audit_pushes_its_suspects_as_the_source_photos(
    label_studio: LabelStudioServer, prepared: Prepared, upstream: dict[str, Path], tmp_path: Path
) -> None:
    splits = tmp_path / "splits.csv"
    flip_labels(prepared.splits, splits, share=0.15)
    demo = {**yaml.safe_load(Path("params.yaml").read_text())["data"]["demo"],
            "per_class": 24, "broken": False}  # prepared's source  # fmt: skip
    params = tiny_params(tmp_path, data__source="demo", data__demo=demo,
                         audit__features="checkpoint")  # fmt: skip
    out, kept = tmp_path / "audit", label_studio.root / "audit"
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.root)}  # fmt: skip
    done = subprocess.run(
        [str(VENV_BIN / "carinspect"), "labels", "audit", "--params", str(params), "--checkpoint",
         str(upstream["best"]), "--ingest", str(prepared.ingest), "--splits", str(splits),
         "--out", str(out), "--push", "--log", str(kept)],
        env={**_env(), **env}, capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doubted = {Path(r["path"]).stem: r for r in csv.DictReader((out / "suspects.csv").open())}
    assert doubted and f"{len(doubted)} suspect(s) added to project" in done.stdout
    with label_studio.session() as http:
        title = "carinspect label audit"
        pid = http.get("/api/projects", params={"title": title}).json()["results"][0]["id"]
        tasks = _tasks(http, pid)
        assert {t["data"]["sha256"] for t in tasks} == set(doubted)  # the manifest's hashes
        task = http.get(f"/api/tasks/{tasks[0]['id']}").json()
        row = doubted[task["data"]["sha256"]]
        (prediction,) = task["predictions"]
        assert prediction["result"][0]["value"]["choices"] == [row["suggested"]]
        photo = http.get(task["data"]["image"])  # the source's own bytes, not ingest's copy
        assert hashlib.sha256(photo.content).hexdigest() == task["data"]["sha256"]
