"""Shared fixtures: small generated datasets and real servers started and stopped by pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from carinspect.config import DemoConfig
from carinspect.data.intake.demo import write_demo

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `slow` tests unless CARINSPECT_SLOW=1, `container` tests unless
    CARINSPECT_CONTAINERS=1, and `gpu` tests without CUDA."""
    run_slow = os.environ.get("CARINSPECT_SLOW") == "1"
    run_containers = os.environ.get("CARINSPECT_CONTAINERS") == "1"
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: set CARINSPECT_SLOW=1 to run"))
        if "container" in item.keywords and not run_containers:
            item.add_marker(
                pytest.mark.skip(reason="container: set CARINSPECT_CONTAINERS=1 to run")
            )
        if "gpu" in item.keywords:
            import torch

            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a server started by a test, by its process id."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with fake credentials in the environment."""
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
    )
    try:
        wait_for_port(port, proc)
        yield endpoint
    finally:
        stop_process(proc)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@pytest.fixture(scope="session")
def demo_cfg() -> DemoConfig:
    """A small demo dataset: 24 images per class plus the broken files."""
    return DemoConfig(per_class=24, seed=0, broken=True)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory, demo_cfg: DemoConfig) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    write_demo(demo_cfg, out)
    return out


@pytest.fixture()
def demo_copy(tmp_path: Path, demo_dir: Path) -> Path:
    """A private copy of the demo folder that a test may modify."""
    dst = tmp_path / "source"
    shutil.copytree(demo_dir, dst)
    return dst


@dataclass(frozen=True)
class Prepared:
    """A tiny ingested and split dataset."""

    ingest: Path
    splits: Path


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """Demo data (24 per class) ingested at 40 px and split: what train consumes."""
    from carinspect.config import DataConfig, IngestConfig, SplitConfig
    from carinspect.stages import ingest, split

    root = tmp_path_factory.mktemp("prepared")
    data = DataConfig(source="demo", demo=DemoConfig(per_class=24, broken=False))
    ingest.run(data, IngestConfig(short_side=40), root / "ingest")
    result = split.run(
        SplitConfig(train=0.6, val=0.2, test=0.2), root / "ingest" / "manifest.csv", root / "split"
    )
    return Prepared(root / "ingest", result.splits)


@pytest.fixture(scope="session")
def prepared_tasks(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Prepared:
    """The demo's tasks.csv (cleanliness and damage, some damage cells empty), ingested at 40 px
    and split: what a two-task train consumes."""
    from carinspect.config import DataConfig, IngestConfig, SplitConfig
    from carinspect.data.intake.demo import TASKS_CSV
    from carinspect.stages import ingest, split

    root = tmp_path_factory.mktemp("prepared-tasks")
    data = DataConfig(source=str(demo_dir / TASKS_CSV), task=["cleanliness", "damage"])
    ingest.run(data, IngestConfig(short_side=40), root / "ingest")
    result = split.run(
        SplitConfig(train=0.6, val=0.2, test=0.2), root / "ingest" / "manifest.csv", root / "split"
    )
    return Prepared(root / "ingest", result.splits)


def tiny_params(tmp_path: Path, **overrides: Any) -> Path:
    """params.yaml for a seconds-long training run: tiny timm model, 32 px, one epoch."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["model"].update({"name": "test_resnet", "img_size": 32})
    raw["train"].update({"epochs": 1, "batch_size": 8, "workers": 0, "warmup_epochs": 0.0})
    # a one-epoch model on a few dozen photos is not shown better than the baseline; these runs
    # test the plumbing (tests/e2e/test_own_photos.py and test_register.py test the verdict)
    raw["register"]["require_better"] = False
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture()
def sqlite_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An embedded MLflow store in the test's folder (the default store, relocated)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # local artifacts land next to it
    return uri


def _webhook_env() -> dict[str, str]:
    """Server env letting webhooks reach a receiver on 127.0.0.1 over http (tests only)."""
    import base64

    return {
        **os.environ,
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
    }


def wait_for_health(url: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    """Wait until an mlflow server answers /health (it takes several seconds to come up)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"mlflow server did not answer /health in {timeout:.0f} s")
        time.sleep(0.5)


def start_mlflow_server(
    root: Path, store: str | None = None
) -> tuple[str, subprocess.Popen[bytes]]:
    """A real `mlflow server` (one worker) on ``store`` (default: SQLite in ``root``), healthy.

    The caller stops it by pid (:func:`stop_process`).
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", store or f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root, env=_webhook_env(),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc)
    except BaseException:
        stop_process(proc)
        raise
    return url, proc


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (one worker, SQLite + local artifacts), stopped by pid."""
    url, proc = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory, prepared: Prepared) -> dict[str, Path]:
    """A tiny trained, evaluated, thresholded and exported model (its MLflow store inside).

    Two epochs on ten test photos: its verdict is "not shown better than the baseline", so the
    tests that register it for the registry's sake say ``require_better=False``.
    """
    import os

    from carinspect.config import (
        EvaluateConfig,
        ExportConfig,
        Settings,
        ThresholdConfig,
        load_params,
    )
    from carinspect.stages import evaluate, export, threshold, train

    root = tmp_path_factory.mktemp("export-upstream")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        p = load_params(tiny_params(root, train__epochs=2))
        t = train.run(
            p.model, p.train, p.mlflow, Settings(), prepared.ingest, prepared.splits, root / "train"
        )
        evaluate.run(
            EvaluateConfig(workers=0),
            Settings(),
            t.best,
            prepared.ingest,
            prepared.splits,
            root / "eval",
            t.run_id,  # later stages append to the training run, as in the pipeline
        )
        threshold.run(
            ThresholdConfig(
                positive_class="clean", target_precision=0.5, allow_fallback=True, bootstrap=0
            ),
            Settings(),
            root / "eval" / "predictions.csv",
            root / "thr",
            t.run_id,
        )
        export.run(
            ExportConfig(),
            Settings(),
            t.best,
            root / "eval" / "calibration.json",
            root / "thr" / "threshold.json",
            prepared.ingest,
            prepared.splits,
            root / "export",
            t.run_id,
        )
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return {
        "best": t.best,
        "calibration": root / "eval" / "calibration.json",
        "threshold": root / "thr" / "threshold.json",
        "export": root / "export",
        "ingest": prepared.ingest,
        "splits": prepared.splits,
        "metrics": root / "eval" / "metrics.json",
        "run_id": Path(t.run_id),
        "tracking": root / "mlflow.db",
    }


@dataclass(frozen=True)
class Registry:
    """A tracking store holding a run that model versions can be registered from."""

    uri: str
    run_id: str
    kind: str


def distinct_export(export: Path, to: Path, mark: str = "retrained") -> Path:
    """A copy of ``export`` whose model.onnx differs (one more metadata entry): another model.

    Register keeps one version per (run, ONNX digest); tests that need several versions of
    "different" models register copies made here.
    """
    import onnx

    shutil.copytree(export, to)
    model = onnx.load(str(to / "model.onnx"))
    model.metadata_props.add(key="carinspect.test", value=mark)
    onnx.save(model, str(to / "model.onnx"))
    return to


def registered_store(folder: Path, upstream: dict[str, Path], name: str = "mlflow") -> str:
    """A copy of the upstream store in ``folder`` with its export registered (version 1); the URI."""
    from carinspect.config import RegisterConfig, Settings
    from carinspect.stages import register

    db = folder / f"{name}.db"
    shutil.copy(upstream["tracking"], db)
    uri = f"sqlite:///{db}"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        register.run(
            RegisterConfig(require_better=False), Settings(), upstream["export"], upstream["metrics"],
            str(upstream["run_id"]), folder / f"{name}-registered.json",
        )  # fmt: skip
    finally:
        if before is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
    return uri


@pytest.fixture(params=["embedded", "server"])
def registry(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    upstream: dict[str, Path],
) -> Registry:
    """The upstream run copied into an embedded store, or a fresh run on a real mlflow server."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    if request.param == "embedded":
        db = tmp_path / "mlflow.db"
        shutil.copy(upstream["tracking"], db)
        uri, run_id = f"sqlite:///{db}", str(upstream["run_id"])
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    else:
        uri = request.getfixturevalue("mlflow_server")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("registry-tests")
        with mlflow.start_run() as run:
            mlflow.log_param("model.name", "test_resnet")
        run_id = run.info.run_id
    mlflow.set_tracking_uri(uri)
    return Registry(uri, run_id, request.param)


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str | None]:
    """A PostgreSQL server (Debian's postgresql) on 127.0.0.1, or None where none is installed.

    initdb refuses to run as root: as root the server runs as the `postgres` user.
    """
    import pwd
    import tempfile

    initdb, postgres = _pg_binary("initdb"), _pg_binary("postgres")
    if initdb is None or postgres is None:
        yield None
        return
    user: str | None = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            yield None
            return
        user = "postgres"
    root = Path(tempfile.mkdtemp(prefix="carinspect-pg-"))
    if user is not None:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data = root / "data"
    subprocess.run(
        [initdb, "-D", str(data), "-A", "trust", "-U", "mlflow", "--no-sync"],
        check=True, user=user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [postgres, "-D", str(data), "-p", str(port), "-k", str(root),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        user=user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        import psycopg

        deadline = time.monotonic() + 30
        while True:  # the port opens before the server accepts logins
            try:
                with psycopg.connect(
                    f"host=127.0.0.1 port={port} user=mlflow dbname=postgres", autocommit=True
                ) as conn:
                    conn.execute("CREATE DATABASE mlflow")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield f"postgresql+psycopg://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Server:
    """A started server: its base URL and process."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def rss_kb(self) -> int:
        """Resident memory of the server process (Linux)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def start_server(
    tmp: Path, env: dict[str, str], ready: bool = True, timeout: float = 60.0
) -> Server:
    """`carinspect serve` on a free port, waited for (ready, or merely alive)."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    proc = subprocess.Popen(
        [str(VENV_BIN / "carinspect"), "serve", "--port", str(port)],
        cwd=tmp,
        env={**os.environ, "MODEL_CACHE_DIR": str(tmp / "model-cache"), **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    path = "/readyz" if ready else "/healthz"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return Server(url, proc, log)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_process(proc)
            raise TimeoutError(f"server not answering {path}: {log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture()
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers for one test; all are stopped by pid afterwards."""
    started: list[Server] = []

    def _start(ready: bool = True, **env: str) -> Server:
        server = start_server(tmp_path, env, ready=ready)
        started.append(server)
        return server

    yield _start
    for server in started:
        stop_process(server.proc)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The flags that keep chromium from reaching out on a closed network (see the machine notes).
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright (no browser download); per module."""
    if not Path(CHROMIUM).is_file():
        message = "chromium not installed (apt-get install chromium)"
        if os.environ.get("CARINSPECT_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@contextmanager
def offline_page(browser: Any, allowed: str) -> Iterator[tuple[Any, list[str]]]:
    """A browser page that may only fetch URLs under ``allowed``, as on an air-gapped network;
    yields it with the list of the other URLs it asked for (each refused)."""
    context = browser.new_context()
    outside: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(allowed):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page, outside
    finally:
        context.close()
