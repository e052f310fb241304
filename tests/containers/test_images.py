"""The images as built: sizes, contents, `--network none`, and the builder's bad-input errors."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import REPO_ROOT
from tests.containers.conftest import Built, Engine

# the first test of a session waits for the images to build (about 10 minutes)
pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]


def test_serving_image_is_small_and_has_no_torch(engine: Engine, images: dict[str, Built]) -> None:
    serving = images["serving"]
    assert serving.size_mb < 400, f"{serving.tag}: {serving.size_mb} MB"
    assert images["pipeline"].size_mb > serving.size_mb
    inspected = engine.docker("image", "inspect", "--format", "{{.Id}} {{.Size}}", serving.tag)
    assert inspected.split()[0] == serving.id
    shown = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", serving.tag, "pip", "show", "torch"],
        capture_output=True, text=True, env={**os.environ, "DOCKER_HOST": engine.host},
    )  # fmt: skip
    assert shown.returncode != 0 and "not found: torch" in shown.stderr, shown
    for absent in ("torch", "timm", "albumentations", "kfp", "dvc", "sklearn"):
        code = f"import importlib.util as u; assert u.find_spec({absent!r}) is None"
        engine.docker("run", "--rm", "--network", "none", serving.tag, "python", "-c", code)


@pytest.mark.parametrize("name", ["serving", "pipeline"])
def test_each_image_runs_with_no_network_as_uid_10001(
    engine: Engine, images: dict[str, Built], name: str
) -> None:
    tag = images[name].tag
    assert engine.docker("run", "--rm", "--network", "none", tag, "id", "-u").strip() == "10001"
    out = engine.docker(
        "run", "--rm", "--network", "none", "--read-only", tag, "carinspect", "--help"
    )
    assert "serve" in out and "images" in out
    probe = "import onnxruntime, fastapi, mlflow.tracking; print(onnxruntime.get_device())"
    if name == "pipeline":
        probe += "; import torch, timm, albumentations, kfp, dvc.api; print(torch.__version__)"
    out = engine.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--tmpfs",
        "/tmp",
        tag,
        "python",
        "-c",
        probe,
    )
    assert out.splitlines()[0] == "CPU"
    if name == "pipeline":
        assert out.splitlines()[1].startswith("2.14.1")


def _cli(engine_host: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO_ROOT / "scripts" / "images.sh"), *args], capture_output=True, text=True,
        cwd=REPO_ROOT, env={**os.environ, "DOCKER_HOST": engine_host}, timeout=600,
    )  # fmt: skip


def test_a_missing_dockerd_is_one_line() -> None:
    done = _cli("unix:///nonexistent/docker.sock", "serving")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "dockerd at unix:///nonexistent/docker.sock is not reachable" in lines[0]
    )


def test_a_base_image_that_is_not_there_is_one_line(engine: Engine) -> None:
    done = _cli(engine.host, "serving", "--base", "python:3.11-not-pulled")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "base image python:3.11-not-pulled: not in the daemon" in lines[0]


def test_a_missing_wheel_is_one_line(
    engine: Engine, images: dict[str, Built], tmp_path: object
) -> None:
    base = "carinspect-base:bookworm"  # imported by the build above; this cache has no wheels
    done = _cli(engine.host, "serving", "--offline", "--cache", str(tmp_path), "--base", base)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no wheel for" in lines[0], lines
