"""The whole KFP pipeline under kfp.local's DockerRunner on the built pipeline image: every task
in its own container with only the pipeline root mounted, MLflow reached over HTTP."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from carinspect.tracking.lineage import git_state
from tests.conftest import REPO_ROOT, VENV_BIN
from tests.containers.conftest import Built, Engine
from tests.pipelines.test_pipeline import TINY

# the first test of a session waits for the images to build (about 10 minutes)
pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]


def test_pipeline_runs_to_a_registered_version_in_containers(
    engine: Engine, images: dict[str, Built], mlflow_server: str, tmp_path: Path
) -> None:
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    name = "kfp-docker"
    pairs = [*TINY, "model.name=test_resnet", f"register.model_name={name}",
             f"kfp.train.image={images['pipeline'].tag}"]  # fmt: skip
    cmd = [str(VENV_BIN / "carinspect"), "pipeline", "run", "--local", "--runner", "docker",
           "--pipeline-root", str(tmp_path / "root")]  # fmt: skip
    for pair in pairs:
        cmd += ["--param", pair]
    env = {**os.environ, "DOCKER_HOST": engine.host, "MLFLOW_TRACKING_URI": mlflow_server}
    env.pop("AWS_ENDPOINT_URL", None)
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    assert f"pipeline finished: registered models:/{name}/" in done.stdout, out[-3000:]
    # seven tasks, each started from the pipeline image (nothing pulled, nothing installed)
    assert out.count(f"Found image '{images['pipeline'].tag}'") == 7, out[-3000:]
    assert "Pulling image" not in out and "pip install" not in out

    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias(name, "challenger")
    tags = client.get_run(version.run_id).data.tags
    # lineage from inside a container: the commit the image was built from, the data digest
    assert tags["git.commit"] == git_state(REPO_ROOT)["git.commit"] != "unknown"
    assert tags["data.digest"].startswith("sha256:")
    assert tags["data.source"] == "demo"
