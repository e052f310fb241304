"""schemathesis against the live /openapi.json: no 5xx, documented statuses, valid bodies."""

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN
from tests.serving.conftest import Server


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(
    serve: Callable[..., Server], upstream: dict[str, Path], tmp_path: Path
) -> None:
    s = serve(
        MODEL_URI=str(upstream["export"]), ALLOW_URL_FETCH="true", URL_FETCH_TIMEOUT_S="2",
        CARINSPECT_WEBHOOK_SECRET="contract-test",
    )  # fmt: skip
    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
    done = subprocess.run(
        [str(VENV_BIN / "schemathesis"), "run", f"{s.url}/openapi.json", "--checks", checks,
         "--max-examples", "100", "--seed", "1", "--report-dir", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:]
    assert "9 selected / 9 total" in done.stdout  # /predict/file: /predict under the seed path
    assert s.proc.poll() is None
