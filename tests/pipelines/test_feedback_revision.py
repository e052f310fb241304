"""The KFP pipeline reads the reviewed photos as `dvc repro` does: data.feedback at a revision."""

import shutil
from pathlib import Path

import boto3
import pytest

from carinspect.config import DataConfig, DemoConfig, IngestConfig, Params
from carinspect.errors import InputError
from carinspect.stages import ingest
from pipelines.commands import feedback_revision
from tests.data.test_sources import dvc, git


def _photos(root: Path, ingested: Path) -> None:
    """A feedback dataset: two demo photos of each class under ``root/photos/<class>/``."""
    for label in ("clean", "dirty"):
        (root / "photos" / label).mkdir(parents=True)
    for i, path in enumerate(sorted(ingested.rglob("*.png"))[:4]):
        shutil.copy(path, root / "photos" / ("clean", "dirty")[i % 2] / path.name)


def _feedback_files(out: Path) -> int:
    import json

    return int(json.loads((out / "report.json").read_text())["feedback"]["files"])


DEMO = DataConfig(source="demo", demo=DemoConfig(per_class=6, broken=False))


def test_a_committed_feedback_revision_is_what_the_pod_reads(tmp_path: Path) -> None:
    repo = tmp_path / "project"
    first = ingest.run(DEMO, IngestConfig(short_side=32, min_per_class=3), tmp_path / "a")
    _photos(repo / "data" / "feedback", first.out / "images")
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    params = Params.model_validate({"data": {"source": "demo", "feedback": "data/feedback"}})
    assert feedback_revision(params, repo) == ""  # nothing dvc-added: nothing reviewed yet
    dvc(repo, "add", "data/feedback/photos")
    with pytest.raises(InputError, match=r"photos.dvc has changes not committed"):
        feedback_revision(params, repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "reviewed")
    url = feedback_revision(params, repo)
    assert url == f"dvc://{repo.resolve()}@{git(repo, 'rev-parse', 'HEAD')}#data/feedback"
    shutil.rmtree(repo / "data" / "feedback" / "photos")  # the pod has no workspace copy
    data = DEMO.model_copy(update={"feedback": url})
    out = ingest.run(data, IngestConfig(short_side=32, min_per_class=3), tmp_path / "b")
    assert _feedback_files(out.out) == 4
    remote = Params.model_validate({"data": {"source": "demo", "feedback": url}})
    assert feedback_revision(remote, repo) == url  # a revision given is passed on as it is


def test_feedback_in_s3_is_read_beside_the_source(tmp_path: Path, s3_endpoint: str) -> None:
    first = ingest.run(DEMO, IngestConfig(short_side=32, min_per_class=3), tmp_path / "a")
    _photos(tmp_path / "fb", first.out / "images")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="reviewed")
    for path in (tmp_path / "fb").rglob("*.png"):
        s3.upload_file(str(path), "reviewed", f"v1/{path.relative_to(tmp_path / 'fb').as_posix()}")
    data = DEMO.model_copy(update={"feedback": "s3://reviewed/v1"})
    out = ingest.run(data, IngestConfig(short_side=32, min_per_class=3), tmp_path / "b")
    assert _feedback_files(out.out) == 4
