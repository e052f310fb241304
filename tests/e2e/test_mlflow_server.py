"""mlflow/: the local launcher and the cluster entrypoint, started for real; alias webhooks."""

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import boto3
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from carinspect.config import PromoteConfig, RegisterConfig, Settings
from carinspect.contracts.rollout import TAG
from carinspect.stages import register
from carinspect.tracking import promotion, rollout
from carinspect.tracking.webhooks import WebhookError, create_registry_webhook, sign, verify
from tests.conftest import (
    _AWS_ENV,
    REPO_ROOT,
    VENV_BIN,
    free_port,
    stop_process,
    wait_for_health,
)


def _image_allowed_hosts() -> str:
    """MLFLOW_SERVER_ALLOWED_HOSTS as mlflow/Dockerfile sets it."""
    text = (REPO_ROOT / "mlflow" / "Dockerfile").read_text()
    found = re.search(r'MLFLOW_SERVER_ALLOWED_HOSTS="([^"]+)"', text)
    assert found, "mlflow/Dockerfile sets no MLFLOW_SERVER_ALLOWED_HOSTS"
    return found.group(1)


def _status(url: str, host: str) -> int:
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _launch(script: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Run one of mlflow/'s scripts with the project's environment on PATH."""
    return subprocess.Popen(
        [str(REPO_ROOT / "mlflow" / script)],
        cwd=cwd,
        env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_local_launcher_serves_the_default_store(tmp_path: Path, upstream: dict[str, Path]) -> None:
    shutil.copy(upstream["tracking"], tmp_path / "mlflow.db")
    (tmp_path / "params.yaml").write_text("{}\n")
    port = free_port()
    proc = _launch("local.sh", tmp_path, {"PORT": str(port)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc)
        run = MlflowClient(url).get_run(str(upstream["run_id"]))  # the pipeline's run, via REST
        assert "model.name" in run.data.params
        assert (tmp_path / "mlruns").is_dir()
    finally:
        stop_process(proc)


def test_local_launcher_refuses_another_folder(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(REPO_ROOT / "mlflow" / "local.sh")], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 2 and "run it from the project folder" in done.stderr


@pytest.fixture()
def cluster_server(
    tmp_path: Path, s3_endpoint: str, postgres_uri: str | None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, str]]:
    """mlflow/entrypoint.sh as the image runs it: db upgrade, S3 artifacts on moto, proxied."""
    bucket = f"mlflow-{tmp_path.name[-8:].lower().replace('_', '-')}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    if postgres_uri is None:
        warnings.warn(
            "PostgreSQL is not installed here: the cluster server test uses SQLite", stacklevel=2
        )
        backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        backend = postgres_uri
    port = free_port()
    env = {
        "MLFLOW_BACKEND_STORE_URI": backend,
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{bucket}/artifacts",
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_SERVER_ALLOWED_HOSTS": _image_allowed_hosts(),
    }
    proc = _launch("entrypoint.sh", tmp_path, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc, timeout=120)
        for key in _AWS_ENV:  # the client side has no S3 credentials: the server proxies
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.chdir(tmp_path)
        yield url, bucket
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_cluster_server_postgres_and_s3(
    tmp_path: Path,
    cluster_server: tuple[str, str],
    upstream: dict[str, Path],
    s3_endpoint: str,
) -> None:
    url, bucket = cluster_server
    mlflow.set_tracking_uri(url)
    mlflow.set_experiment("cluster")
    with mlflow.start_run() as run:
        mlflow.log_param("model.name", "test_resnet")
    cfg = RegisterConfig(model_name="cars", require_better=False)
    registered = register.run(
        cfg,
        Settings(),
        upstream["export"],
        upstream["metrics"],
        run.info.run_id,
        tmp_path / "r.json",
    )
    client = MlflowClient(url)
    move = promotion.promote(client, "cars", PromoteConfig(floor=0.0), None, "ci")  # tiny model
    assert move is not None and move.to_version == registered.version == "1"
    files = Path(mlflow.artifacts.download_artifacts("models:/cars@champion", dst_path="dl"))
    assert (files / "model.onnx").is_file()

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.endswith("/model.onnx") for k in keys), keys
    assert any(k.endswith("extra_files/model.json") for k in keys), keys

    # MLflow 3 checks the Host header: in-cluster service names pass, others do not
    assert _status(url, "mlflow.carinspect.svc.cluster.local:5000") == 200
    assert _status(url, "mlflow:5000") == 200
    assert _status(url, "evil.example.com") == 403


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((dict(self.headers.items()), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.slow
def test_alias_webhook_is_delivered_signed(
    tmp_path: Path, mlflow_server: str, upstream: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        client = MlflowClient(mlflow_server)
        name = f"hook-{tmp_path.name[-8:]}"
        hook_url = f"http://127.0.0.1:{receiver.server_port}/webhooks/mlflow"
        hook = create_registry_webhook(client, f"{name}-hook", hook_url, "s3cret")
        try:
            mlflow.set_tracking_uri(mlflow_server)
            mlflow.set_experiment("webhooks")
            with mlflow.start_run() as run:
                mlflow.log_param("model.name", "test_resnet")
            register.run(
                RegisterConfig(model_name=name, require_better=False), Settings(), upstream["export"],
                upstream["metrics"], run.info.run_id, tmp_path / "r.json",
            )  # fmt: skip
            mine = _delivered(lambda e: e["data"].get("name") == name)
            assert mine, "no alias event reached the receiver"
            event = mine[0]
            assert (event["entity"], event["action"]) == ("model_version_alias", "created")
            assert event["data"]["alias"] == "challenger" and event["data"]["version"] == "1"
            # a rollout's share is a version tag: serving hears of it as soon
            rollout.start(MlflowClient(mlflow_server), name, "challenger", [5, 100], "t",
                          champion_alias="nobody")  # fmt: skip
            tagged = _delivered(lambda e: e["data"].get("key") == TAG)
            assert tagged, "no rollout event reached the receiver"
            assert (tagged[0]["entity"], tagged[0]["action"]) == ("model_version_tag", "set")
            assert tagged[0]["data"]["name"] == name and tagged[0]["data"]["version"] == "1"
            headers, body = _Receiver.received[0]
            with pytest.raises(WebhookError, match="does not match"):
                verify("another secret", headers, body)
            with pytest.raises(WebhookError, match="does not match"):
                verify("s3cret", headers, body.replace(b"challenger", b"champion"))
        finally:
            client.delete_webhook(hook.webhook_id)
    finally:
        receiver.shutdown()


def _delivered(wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The verified deliveries ``wanted`` picks, waited for up to 20 s."""
    deadline = time.monotonic() + 20
    while True:
        events = [verify("s3cret", headers, body) for headers, body in _Receiver.received]
        found = [e for e in events if wanted(e)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_verify_rejects_old_and_unsigned_deliveries() -> None:
    body = json.dumps({"entity": "model_version_alias", "action": "created"}).encode()
    old = str(int(time.time()) - 3600)
    headers = {
        "X-MLflow-Signature": sign("k", "d1", old, body),
        "X-MLflow-Timestamp": old,
        "X-MLflow-Delivery-Id": "d1",
    }
    # 3600 s, or 3601 when the clock ticks over between signing and checking
    with pytest.raises(WebhookError, match=r"is 360[01] s old \(limit 300 s\)"):
        verify("k", headers, body)
    assert verify("k", headers, body, max_age_s=7200)["action"] == "created"
    with pytest.raises(WebhookError, match="without MLflow signature"):
        verify("k", {"x-mlflow-timestamp": old}, body)
