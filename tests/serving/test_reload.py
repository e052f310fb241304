"""Following the alias: swaps under load, a broken version, the audit trail, webhooks."""

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from carinspect.config import RegisterConfig, Settings
from carinspect.stages import register
from carinspect.tracking.audit import read_trail
from carinspect.tracking.runs import reopen_run
from carinspect.tracking.webhooks import sign
from tests.conftest import distinct_export, start_mlflow_server, stop_process
from tests.serving.conftest import Server, image_bytes

NAME = "cars"


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory, upstream: dict[str, Path]) -> Path:
    """An embedded store with versions 1 and 2 (good) and 3 (model.onnx is garbage)."""
    root = tmp_path_factory.mktemp("serving-registry")
    db = root / "mlflow.db"
    shutil.copy(upstream["tracking"], db)
    uri = f"sqlite:///{db}"
    cwd = Path.cwd()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(root)
    try:
        exports = (upstream["export"], distinct_export(upstream["export"], root / "export2"))
        for export in exports:  # two models (register is once per run and export)
            register.run(
                RegisterConfig(model_name=NAME, require_better=False), Settings(), export,
                upstream["metrics"], str(upstream["run_id"]), root / "registered.json",
            )  # fmt: skip
        broken = root / "broken"
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"this is not an onnx file")
        (broken / "extra_files").mkdir()
        shutil.copy(upstream["export"] / "model.json", broken / "extra_files" / "model.json")
        mlflow.set_tracking_uri(uri)
        with reopen_run(str(upstream["run_id"])):
            mlflow.log_artifacts(str(broken), "broken")
            source = mlflow.get_artifact_uri("broken")
        client = MlflowClient(uri)
        client.create_model_version(NAME, source, run_id=str(upstream["run_id"]))
        client.set_registered_model_alias(NAME, "champion", "1")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.chdir(cwd)
    return root


@pytest.fixture()
def registry(tmp_path: Path, registry_template: Path) -> str:
    """A private copy of the template store (artifacts stay where the template put them)."""
    db = tmp_path / "registry.db"
    shutil.copy(registry_template / "mlflow.db", db)
    return f"sqlite:///{db}"


def _version(server: Server) -> str | None:
    return httpx.get(server.url + "/model", timeout=10).json()["version"]


def _wait_for_version(server: Server, version: str, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if _version(server) == version:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"version {version} not served within {within} s: {_version(server)}")


def test_alias_moves_under_load_without_failed_requests(
    serve: Callable[..., Server], registry: str
) -> None:
    s = serve(MODEL_URI=f"models:/{NAME}@champion", MLFLOW_TRACKING_URI=registry, POLL_SECONDS="1")
    assert _version(s) == "1"
    client = MlflowClient(registry)
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        data = image_bytes()
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                r = http.post(s.url + "/predict", files={"file": ("a.jpg", data, "image/jpeg")})
                version = r.json()["model"]["version"] if r.status_code == 200 else None
                results.append((r.status_code, version))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        client.set_registered_model_alias(NAME, "champion", "2")
        took = _wait_for_version(s, "2", within=15)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    versions = [v for _, v in results]
    assert "1" in versions and versions[-1] == "2"
    assert took < 1 + 10  # the poll interval plus download, session and warm-up
    # the server noticed the outside move and recorded it in the audit trail
    trail = read_trail(client, NAME, "champion")
    assert any(
        m.action == "external" and m.to_version == "2" and "carinspect serve" in m.reason
        for m in trail
    ), trail

    client.set_registered_model_alias(NAME, "champion", "3")  # a version that cannot load
    deadline = time.monotonic() + 15
    info = httpx.get(s.url + "/model").json()
    while info["last_reload_error"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
        info = httpx.get(s.url + "/model").json()
    assert info["version"] == "2" and info["ready"]
    assert "onnxruntime cannot open it" in info["last_reload_error"]
    assert info["reload_failures"] >= 1
    metrics = httpx.get(s.url + "/metrics").text
    assert "carinspect_model_reload_failures_total 0.0" not in metrics
    assert 'version="2"' in metrics
    r = httpx.post(s.url + "/predict", files={"file": ("a.jpg", image_bytes(), "image/jpeg")})
    assert r.status_code == 200 and r.json()["model"]["version"] == "2"
    assert "model reload failed, still serving 2" in s.log.read_text()

    client.set_registered_model_alias(NAME, "champion", "2")  # back to the version serving
    deadline = time.monotonic() + 15
    while info["last_reload_error"] is not None and time.monotonic() < deadline:
        time.sleep(0.2)
        info = httpx.get(s.url + "/model").json()
    assert info["last_reload_error"] is None and info["version"] == "2"


def test_waiting_for_a_first_champion_is_quiet_and_not_a_failure(
    serve: Callable[..., Server], registry: str
) -> None:
    client = MlflowClient(registry)
    client.delete_registered_model_alias(NAME, "champion")
    s = serve(
        ready=False, MODEL_URI=f"models:/{NAME}@champion", MLFLOW_TRACKING_URI=registry,
        POLL_SECONDS="0.3",
    )  # fmt: skip
    time.sleep(3)  # about ten polls
    ready = httpx.get(s.url + "/readyz")
    assert ready.status_code == 503
    assert "has no alias 'champion' yet" in ready.json()["detail"]
    r = httpx.post(s.url + "/predict", files={"file": ("a.jpg", image_bytes(), "image/jpeg")})
    assert r.status_code == 503 and "no alias 'champion' yet" in r.json()["detail"]
    info = httpx.get(s.url + "/model").json()
    assert info["reload_failures"] == 0 and info["last_reload_error"] is None
    assert "no alias 'champion' yet" in info["waiting_for"]
    assert "carinspect_model_reload_failures_total 0.0" in httpx.get(s.url + "/metrics").text
    log = s.log.read_text()
    assert log.count("waiting for models:/cars@champion") == 1, log
    assert "ERROR" not in log and "reload failed" not in log, log

    client.set_registered_model_alias(NAME, "champion", "1")  # the first promotion
    deadline = time.monotonic() + 20
    while httpx.get(s.url + "/readyz").status_code != 200:
        assert time.monotonic() < deadline, s.log.read_text()
        time.sleep(0.2)
    info = httpx.get(s.url + "/model").json()
    assert info["version"] == "1" and info["waiting_for"] is None, info
    assert info["reload_failures"] == 0, s.log.read_text()


def test_a_promotion_during_a_poll_is_not_a_failure(
    registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alias is set between the poll's lookup and its second look: load it, count nothing.

    This is the race a real promotion hits while a server waits for its first champion.
    """
    from carinspect.serving.model_store import ModelStore
    from carinspect.serving.settings import ServeSettings

    client = MlflowClient(registry)
    client.delete_registered_model_alias(NAME, "champion")
    lookup = MlflowClient.get_model_version_by_alias
    misses = []

    def promoted_right_after_a_miss(self: MlflowClient, name: str, alias: str) -> object:
        try:
            return lookup(self, name, alias)
        except Exception:
            misses.append(alias)
            client.set_registered_model_alias(NAME, "champion", "1")  # a real write, mid-poll
            raise

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", promoted_right_after_a_miss)
    store = ModelStore(
        ServeSettings(
            MODEL_URI=f"models:/{NAME}@champion", MLFLOW_TRACKING_URI=registry,
            MODEL_CACHE_DIR=tmp_path / "cache",
        )
    )  # fmt: skip
    assert store.refresh(), store.last_error
    assert misses == ["champion"]
    assert store.failures == 0 and store.last_error is None and store.waiting_for is None
    assert store.current is not None and store.current.version == "1"


def test_webhook_triggers_a_reload_before_the_next_poll(
    serve: Callable[..., Server], registry: str
) -> None:
    s = serve(
        MODEL_URI=f"models:/{NAME}@champion", MLFLOW_TRACKING_URI=registry,
        POLL_SECONDS="3600", CARINSPECT_WEBHOOK_SECRET="hook-secret",
    )  # fmt: skip
    MlflowClient(registry).set_registered_model_alias(NAME, "champion", "2")
    body = json.dumps(
        {
            "entity": "model_version_alias",
            "action": "created",
            "timestamp": "2026-11-22T00:00:00+00:00",
            "data": {"name": NAME, "alias": "champion", "version": "2"},
        }
    ).encode()
    ts = str(int(time.time()))
    headers = {
        "X-MLflow-Delivery-Id": "d-1",
        "X-MLflow-Timestamp": ts,
        "X-MLflow-Signature": sign("hook-secret", "d-1", ts, body),
        "Content-Type": "application/json",
    }
    forged = {**headers, "X-MLflow-Signature": sign("other", "d-1", ts, body)}
    assert "/webhooks/mlflow" in httpx.get(s.url + "/openapi.json").json()["paths"]
    bad = httpx.post(s.url + "/webhooks/mlflow", content=body, headers=forged)
    assert bad.status_code == 401 and "does not match" in bad.json()["detail"]
    assert _version(s) == "1"
    ok = httpx.post(s.url + "/webhooks/mlflow", content=body, headers=headers)
    assert ok.status_code == 202 and ok.json()["status"] == "accepted"
    _wait_for_version(s, "2", within=20)
    replayed = httpx.post(s.url + "/webhooks/mlflow", content=body, headers=headers)
    assert replayed.status_code == 401 and "already received" in replayed.json()["detail"]


def test_a_registered_model_that_does_not_exist_yet_is_awaited(
    serve: Callable[..., Server], registry: str
) -> None:
    s = serve(
        ready=False, MODEL_URI="models:/ghost@champion", MLFLOW_TRACKING_URI=registry,
        POLL_SECONDS="1",
    )  # fmt: skip
    ready = httpx.get(s.url + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["detail"] == "registered model 'ghost' does not exist yet"
    r = httpx.post(s.url + "/predict", files={"file": ("a.jpg", image_bytes(), "image/jpeg")})
    assert r.status_code == 503 and "no model loaded yet" in r.json()["detail"]
    assert httpx.get(s.url + "/model").json()["reload_failures"] == 0


@pytest.mark.slow
def test_an_unreachable_registry_shows_at_once_while_the_model_keeps_serving(
    serve: Callable[..., Server], registry: str, tmp_path: Path
) -> None:
    url, tracking = start_mlflow_server(tmp_path / "mlflow-server", registry)
    try:
        s = serve(MODEL_URI=f"models:/{NAME}@champion", MLFLOW_TRACKING_URI=url, POLL_SECONDS="1")
        status = httpx.get(s.url + "/model").json()
        assert status["version"] == "1" and status["registry_reachable"] is True
        stop_process(tracking)  # the registry goes away
        deadline = time.monotonic() + 6
        while (
            httpx.get(s.url + "/model").json()["registry_reachable"] and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        status = httpx.get(s.url + "/model").json()
        assert status["registry_reachable"] is False, status
        assert url in status["registry_error"] and "unreachable" in status["registry_error"]
        assert status["reload_failures"] >= 1 and status["last_reload_error"]
        metrics = httpx.get(s.url + "/metrics").text
        assert "carinspect_registry_reachable 0.0" in metrics
        answer = httpx.post(
            s.url + "/predict", files={"file": ("a.jpg", image_bytes(), "image/jpeg")}
        )
        assert answer.status_code == 200 and answer.json()["model"]["version"] == "1"
    finally:
        stop_process(tracking)
