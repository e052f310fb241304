"""`pipeline run --local --runner docker` refuses what a task container could not use (the
run itself is in the container tier: tests/containers/test_pipeline_image.py)."""

import re
from pathlib import Path

import pytest

from carinspect.errors import InputError
from pipelines.commands import run_local
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "./mlruns", None])
def test_docker_runner_needs_mlflow_over_http(
    uri: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if uri is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    shown = repr(uri) if uri else "'(unset)'"
    with pytest.raises(InputError, match=rf"MLFLOW_TRACKING_URI {re.escape(shown)}: .* over HTTP"):
        run_local(
            REPO_ROOT / "params.yaml", ["data_source=demo"], REPO_ROOT, tmp_path, runner="docker"
        )
    assert not any(tmp_path.iterdir()), "nothing is written before the runner is usable"


def test_an_unknown_runner_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--runner 'kubernetes': expected subprocess or docker"):
        run_local(REPO_ROOT / "params.yaml", ["data_source=demo"], REPO_ROOT, tmp_path,
                  runner="kubernetes")  # fmt: skip
