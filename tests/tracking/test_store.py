"""A copied or moved project folder: its embedded MLflow store is detected and relocated."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from carinspect.config import MlflowConfig, Settings
from carinspect.tracking import runs
from carinspect.tracking.store import StoreError, relocate, stale_root
from tests.conftest import REPO_ROOT, VENV_BIN


def _store(folder: Path) -> str:
    """A project folder's default store: one run with an artifact, one registered version.

    Made with a client, not mlflow's fluent API, which would leave a global tracking URI (and
    MLFLOW_TRACKING_URI) pointing at this store for later tests.
    """
    folder.mkdir()
    cwd = Path.cwd()
    os.chdir(folder)  # ./mlruns resolves here, as for a pipeline run in the project folder
    try:
        client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        run = client.create_run(client.create_experiment("carinspect"))
        client.log_dict(run.info.run_id, {"where": "original"}, "export/model.json")
        client.set_terminated(run.info.run_id)
        client.create_registered_model("cars")
        source = f"{run.info.artifact_uri}/export"
        client.create_model_version("cars", source, run_id=run.info.run_id)
    finally:
        os.chdir(cwd)
    return str(run.info.run_id)


def _carinspect(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "carinspect"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_a_copied_store_is_refused_then_relocated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _store(tmp_path / "original")
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "original", copy)
    artifact = next(copy.glob("mlruns/*/*/artifacts/export/model.json"))
    artifact.write_text(json.dumps({"where": "copy"}))
    assert stale_root(copy / "mlflow.db") == tmp_path / "original"

    refused = _carinspect("store", "check", cwd=copy)
    assert refused.returncode == 2
    assert (
        "carinspect store relocate" in refused.stderr
        and str(tmp_path / "original") in refused.stderr
    )
    launcher = subprocess.run(
        [str(REPO_ROOT / "mlflow" / "local.sh")], cwd=copy, capture_output=True, text=True,
        env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}, timeout=120,
    )  # fmt: skip
    assert launcher.returncode == 2 and "carinspect store relocate" in launcher.stderr
    monkeypatch.chdir(copy)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")  # the default store
    with pytest.raises(StoreError, match="copied or moved"):  # no run may write to the original
        runs.start_run(Settings(), MlflowConfig(), None)

    moved = _carinspect("store", "relocate", cwd=copy)
    assert moved.returncode == 0, moved.stderr
    assert "artifact paths moved" in moved.stdout
    assert stale_root(copy / "mlflow.db") is None
    client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    assert str(copy) in client.get_run(run_id).info.artifact_uri
    got = client.download_artifacts(run_id, "export/model.json", str(tmp_path / "dl-run"))
    assert json.loads(Path(got).read_text()) == {"where": "copy"}
    where = client.get_model_version_download_uri("cars", "1")
    version = mlflow.artifacts.download_artifacts(where, dst_path=str(tmp_path / "dl-version"))
    assert json.loads((Path(version) / "model.json").read_text()) == {"where": "copy"}
    assert _carinspect("store", "relocate", cwd=copy).stdout.strip().endswith("nothing to relocate")
    # the original is untouched
    original = MlflowClient(f"sqlite:///{tmp_path / 'original' / 'mlflow.db'}")
    assert str(tmp_path / "original") in original.get_run(run_id).info.artifact_uri


def test_a_moved_store_is_detected_and_a_store_on_another_disk_is_not(tmp_path: Path) -> None:
    run_id = _store(tmp_path / "before")
    (tmp_path / "before").rename(tmp_path / "after")
    db = tmp_path / "after" / "mlflow.db"
    assert stale_root(db) == tmp_path / "before"
    assert relocate(db).rows >= 3  # experiment, run, model version
    assert stale_root(db) is None
    uri = MlflowClient(f"sqlite:///{db}").get_run(run_id).info.artifact_uri
    assert uri.startswith(str(tmp_path / "after" / "mlruns"))

    elsewhere = tmp_path / "big-disk"
    (elsewhere / "mlruns").mkdir(parents=True)  # artifacts kept apart on purpose: no mlflow.db
    other = tmp_path / "project"
    other.mkdir()
    client = MlflowClient(f"sqlite:///{other / 'mlflow.db'}")
    client.create_experiment("kept-apart", artifact_location=str(elsewhere / "mlruns" / "1"))
    assert stale_root(other / "mlflow.db") is None
