"""Faults with real processes: a real `mlflow server`, `carinspect train` killed by real signals.

What a fault run found (issue 38): runs left RUNNING forever after a kill or an outage, minutes
of retries before an outage became an error, and a rerun that started training over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import VENV_BIN, Prepared, start_mlflow_server, stop_process, tiny_params

pytestmark = pytest.mark.slow


def _train(
    tmp: Path, prepared: Prepared, uri: str, params: Path, *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(VENV_BIN / "carinspect"), "train", "--params", str(params), "--ingest",
         str(prepared.ingest), "--splits", str(prepared.splits), "--out", str(tmp / "train"),
         *extra],
        cwd=tmp, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _wait_for_checkpoint(tmp: Path, proc: subprocess.Popen[str], within: float = 120) -> None:
    last = tmp / "train" / "last.pt"
    deadline = time.monotonic() + within
    while not last.is_file():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.1)
    time.sleep(0.3)  # the rename is done; let the epoch's MLflow calls finish too


def _runs(uri: str) -> list:  # type: ignore[type-arg]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("carinspect")
    assert experiment is not None
    return list(client.search_runs([experiment.experiment_id]))


def _params(tmp: Path, epochs: int) -> Path:
    """A run long enough to be signalled mid-way: no early stop (a fast machine once finished
    the 32-pixel model's 16 epochs before SIGTERM arrived)."""
    return tiny_params(
        tmp, train__epochs=epochs, train__nproc=1, mlflow__experiment="carinspect",
        train__early_stopping={"monitor": "val_macro_f1", "patience": 10_000, "min_delta": 0.0},
    )  # fmt: skip


def test_sigterm_ends_the_run_killed_and_the_rerun_resumes_it(
    tmp_path: Path, prepared: Prepared
) -> None:
    uri, server = start_mlflow_server(tmp_path / "mlflow")
    try:
        params = _params(tmp_path, epochs=80)
        proc = _train(tmp_path, prepared, uri, params)
        _wait_for_checkpoint(tmp_path, proc)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 143, output[-3000:]
        assert "Traceback" not in output and "stopped by SIGTERM" in output
        (run,) = _runs(uri)
        assert run.info.status == "KILLED"
        rerun = _train(tmp_path, prepared, uri, params)
        output = rerun.communicate(timeout=300)[0]
        assert rerun.returncode == 0, output[-3000:]
        assert "resuming: " in output and "same params and data" in output
        (again,) = _runs(uri)  # the same run, continued and finished
        assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    finally:
        stop_process(server)


def test_a_run_left_running_by_sigkill_is_closed_by_the_next_train(
    tmp_path: Path, prepared: Prepared
) -> None:
    uri, server = start_mlflow_server(tmp_path / "mlflow")
    try:
        proc = _train(tmp_path, prepared, uri, _params(tmp_path, epochs=80))
        _wait_for_checkpoint(tmp_path, proc)
        proc.kill()
        proc.communicate()
        (killed,) = _runs(uri)
        assert killed.info.status == "RUNNING"  # nothing could end it
        fresh = _train(tmp_path, prepared, uri, _params(tmp_path, epochs=1), "--fresh")
        output = fresh.communicate(timeout=300)[0]
        assert fresh.returncode == 0, output[-3000:]
        runs = {r.info.run_id: r for r in _runs(uri)}
        assert len(runs) == 2
        closed = runs[killed.info.run_id]
        assert closed.info.status == "FAILED"
        assert "was gone (killed)" in closed.data.tags["carinspect.closed_by"]
    finally:
        stop_process(server)


def test_a_tracking_server_gone_fails_train_in_seconds_then_train_resumes(
    tmp_path: Path, prepared: Prepared
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    uri, server = start_mlflow_server(tmp_path / "mlflow", store)
    params = _params(tmp_path, epochs=80)
    try:
        proc = _train(tmp_path, prepared, uri, params)
        _wait_for_checkpoint(tmp_path, proc)
        stop_process(server)  # the tracking server goes away mid-training
        gone = time.monotonic()
        output = proc.communicate(timeout=300)[0]
        failed_after = time.monotonic() - gone
        assert proc.returncode != 0
        assert failed_after < 60, f"train took {failed_after:.0f} s to give up"
        assert "Traceback" not in output, output[-3000:]
    finally:
        stop_process(server)
    uri, server = start_mlflow_server(tmp_path / "mlflow", store)  # back, on another port
    try:
        rerun = _train(tmp_path, prepared, uri, params)
        output = rerun.communicate(timeout=300)[0]
        assert rerun.returncode == 0, output[-3000:]
        assert "resuming: " in output
        (run,) = _runs(uri)
        assert run.info.status == "FINISHED"
    finally:
        stop_process(server)
