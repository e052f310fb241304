"""Progressive delivery for real: `carinspect serve` scraped by a real Prometheus (Debian's),
`carinspect rollout run` stepping a canary by that Prometheus's figures, and the drift alerts.

One server follows models:/cars@champion. Clients keep sending demo photos under 24 client
keys while:

(a) a good challenger (the champion's twin) is stepped 20% -> 100% and promoted, and no client
    request fails;
(b) a challenger whose graph fails on every real photo (it passes the zeros of the warm-up) is
    rolled back to 0% at its first step, with the failed query in the audit trail; only clients
    in its 20% share saw failures, and none after the rollback reached the server.

Then the drift alerts of k8s/monitoring's rules: quiet for the photos the version's profile was
made of, firing for darkened ones (and a rollout's analysis fails on them). The rules' `for:` durations are cut to 0s here (their timing is promtool's unit
test); every dashboard panel's query runs without error against this Prometheus.
"""

import io
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import yaml
from mlflow.tracking import MlflowClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from carinspect.config import DemoConfig, RegisterConfig, Settings, load_params
from carinspect.data.intake.demo import demo_files
from carinspect.delivery.analysis import Prometheus, analyse
from carinspect.serving.second import client_bucket
from carinspect.stages import register
from carinspect.tracking import rollout as state
from tests.conftest import REPO_ROOT, VENV_BIN, stop_process, tiny_params
from tests.drift.test_served import train_originals
from tests.monitoring.prometheus import Prom, start_prometheus
from tests.serving.conftest import Server
from tests.serving.test_second import _with_rule

pytestmark = pytest.mark.slow

NAME = "cars"
KEYS = [f"client-{i}" for i in range(24)]


def fail_on_real_photos(model: Path) -> None:
    """Make ``model`` (an ONNX file) fail on any photo but answer the warm-up's zeros.

    An index into a table of two zeros is taken from the largest pixel value: 0 for a batch of
    zeros, out of range (an onnxruntime error) for anything a camera takes.
    """
    m = onnx.load(model)
    g, target, raw = m.graph, "probabilities", "probabilities_raw"
    for node in g.node:
        node.output[:] = [raw if o == target else o for o in node.output]
        node.input[:] = [raw if i == target else i for i in node.input]
    g.initializer.extend([
        numpy_helper.from_array(np.zeros(2, np.float32), "fail_table"),
        numpy_helper.from_array(np.array(100.0, np.float32), "fail_scale"),
    ])  # fmt: skip
    g.node.extend([
        helper.make_node("Abs", ["input"], ["fail_abs"]),
        helper.make_node("ReduceMax", ["fail_abs"], ["fail_max"], keepdims=0),
        helper.make_node("Mul", ["fail_max", "fail_scale"], ["fail_scaled"]),
        helper.make_node("Cast", ["fail_scaled"], ["fail_index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["fail_table", "fail_index"], ["fail_zero"]),
        helper.make_node("Add", [raw, "fail_zero"], [target]),
    ])  # fmt: skip
    onnx.checker.check_model(m)
    onnx.save(m, model)


@pytest.fixture()
def registry(tmp_path: Path, upstream: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> str:
    """Versions 1 and 2 answer (almost) every car dirty (twins); 3 fails on real photos.

    Version 2's rule differs from 1's in the fifth decimal: register is idempotent per export
    digest, so identical twins would be one version.
    """
    shutil.copy(upstream["tracking"], tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    for n, rule in ((1, 1.0), (2, 0.99999), (3, 1.0)):
        export = _with_rule(upstream["export"], tmp_path / f"export{n}", rule)
        if n == 3:
            fail_on_real_photos(export / "model.onnx")
        register.run(
            RegisterConfig(model_name=NAME, require_better=False), Settings(), export,
            upstream["metrics"], str(upstream["run_id"]), tmp_path / "registered.json",
        )  # fmt: skip
    client = MlflowClient(uri)
    client.set_registered_model_alias(NAME, "champion", "1")
    client.set_registered_model_alias(NAME, "challenger", "2")
    return uri


class Clients:
    """Threads sending photos under the client keys; every answer kept with its time."""

    def __init__(self, server: Server, photos: list[bytes]) -> None:
        self.server, self.photos = server, photos
        self.seen: list[tuple[float, str, int, str | None]] = []  # time, key, status, version
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(i,)) for i in range(4)]

    def _send(self, n: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = n
            while not self._stop.is_set():
                key, photo = KEYS[i % len(KEYS)], self.photos[i % len(self.photos)]
                r = http.post(f"{self.server.url}/predict", files={"file": ("car.png", photo)},
                              headers={"X-Client-Key": key})  # fmt: skip
                version = r.json()["model"]["version"] if r.status_code == 200 else None
                self.seen.append((time.time(), key, r.status_code, version))
                i += 4

    def __enter__(self) -> "Clients":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def _rollout(params: Path, env: dict[str, str], *args: str, timeout: float = 180) -> Any:
    cmd = [str(VENV_BIN / "carinspect"), "rollout", *args, "--params", str(params)]
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:  # what it said so far
        raise AssertionError(f"{cmd} ran past {timeout} s: {err.stdout!r} {err.stderr!r}") from None


@pytest.fixture()
def stack(
    registry: str, serve: Callable[..., Server], tmp_path: Path
) -> Iterator[Callable[..., tuple[Server, Prom]]]:
    """Start the server (env: its drift settings) and a Prometheus scraping it."""
    proms: list[Prom] = []

    def start(**env: str) -> tuple[Server, Prom]:
        server = serve(MODEL_URI=f"models:/{NAME}@champion", MLFLOW_TRACKING_URI=registry,
                       POLL_SECONDS="0.5", **env)  # fmt: skip
        proms.append(start_prometheus(tmp_path / "prom", server.url.removeprefix("http://")))
        return server, proms[-1]

    yield start
    for prom in proms:
        stop_process(prom.proc)


def test_a_rollout_steps_a_good_challenger_and_rolls_back_a_failing_one_by_prometheus(
    stack: Callable[..., tuple[Server, Prom]], registry: str, tmp_path: Path
) -> None:
    # drift is judged in the next test: a window of a few dozen photos against this tiny model's
    # profile is too noisy to hold still under a load that samples photos unevenly
    server, prom = stack(DRIFT_WINDOW="0")
    photos = [f.make() for f in demo_files(DemoConfig(per_class=12, seed=99, broken=False))]
    # a short schedule and a small step for a test; the p99 ratio of two twins over a few dozen
    # answers on a shared 2-core machine is noise, so its limit is loosened here
    params = tiny_params(tmp_path, rollout__schedule=[20, 100], rollout__min_requests=15,
                         rollout__interval_s=1.0, promote__floor=0.0,
                         register__model_name=NAME)  # fmt: skip
    raw = yaml.safe_load(params.read_text())
    for check in raw["rollout"]["checks"]:
        if check["name"] == "p99_latency_ratio":
            check["max"] = 20.0
    params.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry, "PROMETHEUS_URL": prom.url,
           "CARINSPECT_USER": "release-bot"}  # fmt: skip
    client = MlflowClient(registry)
    on_canary = {k for k in KEYS if client_bucket(k) < 2000}  # the 20% share's clients
    assert on_canary and len(on_canary) < len(KEYS)

    with Clients(server, photos) as clients:
        # (a) the champion's twin: stepped to 100% and promoted; nobody sees a failure
        started = _rollout(params, env, "start")
        assert started.returncode == 0, started.stderr
        done = _rollout(params, env, "run")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "step: analysis passed" in done.stdout and "promote: analysis passed" in done.stdout
        aliases = client.get_registered_model(NAME).aliases
        assert str(aliases["champion"]) == "2"
        assert all(status == 200 for _, _, status, _ in clients.seen), clients.seen[:3]
        assert {v for *_, v in clients.seen} == {"1", "2"}

        # (b) a challenger that fails on every real photo: rolled back at its first step
        client.set_registered_model_alias(NAME, "challenger", "3")
        started = _rollout(params, env, "start")
        assert started.returncode == 0, started.stderr
        before = len(clients.seen)
        done = _rollout(params, env, "run")
        aborted_at = time.time()
        assert done.returncode == 1, done.stdout + done.stderr
        assert "abort: analysis failed: error_rate = 1 (limit <= 0.01)" in done.stdout, done.stdout
        time.sleep(3)  # one poll (0.5 s) brings every client back; then more traffic

    ended = state.recorded(client, NAME)[0]
    assert (ended.version, ended.status, ended.share) == ("3", "aborted", 0.0)
    trail = state.history(client, NAME, ended.id)
    abort = trail[-1]
    assert abort.event == "abort" and abort.by == "release-bot" and abort.share_to == 0.0
    failed = {f["name"]: f for f in abort.analysis if f["passed"] is False}
    assert set(failed) == {"error_rate"}
    assert "carinspect_answers_total" in failed["error_rate"]["query"]
    assert failed["error_rate"]["value"] == 1.0 and failed["error_rate"]["limit"] == "<= 0.01"
    assert str(client.get_registered_model(NAME).aliases["champion"]) == "2"

    during = clients.seen[before:]
    failures = [(t, k) for t, k, status, _ in during if status != 200]
    assert failures, "the failing challenger answered nobody"
    assert {k for _, k in failures} <= on_canary  # only its share's clients saw them
    assert max(t for t, _ in failures) < aborted_at + 1.5  # none after it was caught
    assert all(v == "2" for t, _, status, v in during if t > aborted_at + 1.5)
    assert all(status in (200, 500) for _, _, status, _ in during)

    status = _rollout(params, env, "status", "--json")
    doc = json.loads(status.stdout)
    assert doc["rollout"]["status"] == "aborted" and doc["share"] == 0.0
    assert doc["trail"][0]["event"] == "start"
    # every dashboard panel's query is one this Prometheus evaluates
    board = json.loads((REPO_ROOT / "k8s/monitoring/dashboard.json").read_text())
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$__range", "5m")
            prom.query(expr)


def test_the_drift_alerts_fire_for_darkened_photos_and_not_for_the_training_photos(
    stack: Callable[..., tuple[Server, Prom]], upstream: dict[str, Path], tmp_path: Path
) -> None:
    # the photos the version's profile was made of, each once: the window is that distribution
    train = [p.read_bytes() for _, p in train_originals(upstream, tmp_path / "train")]
    server, prom = stack(DRIFT_WINDOW=str(len(train)), DRIFT_MIN_PHOTOS=str(len(train)))
    with httpx.Client(timeout=30) as http:

        def send(change: Callable[[Image.Image], Image.Image] | None = None) -> None:
            for data in train:
                if change is not None:
                    out = io.BytesIO()
                    change(Image.open(io.BytesIO(data)).convert("RGB")).save(out, format="PNG")
                    data = out.getvalue()
                assert http.post(f"{server.url}/predict", files={"file": ("car.png", data)}
                                 ).status_code == 200  # fmt: skip

        send()
        deadline = time.monotonic() + 30
        while not prom.query("carinspect_drift_psi"):
            assert time.monotonic() < deadline, "no drift scores scraped"
            time.sleep(0.5)
        time.sleep(4)  # several evaluations of the rules on calm scores
        calm = prom.firing()
        assert not calm & {"CarinspectDriftImage", "CarinspectDriftEmbedding"}, calm

        send(lambda im: im.point(lambda v: v * 0.4))  # the window: only darkened photos
        deadline = time.monotonic() + 30
        while not {"CarinspectDriftImage", "CarinspectDriftEmbedding"} <= prom.firing():
            assert time.monotonic() < deadline, prom.firing()
            time.sleep(0.5)
    stats = {r["metric"]["stat"] for r in prom.query('ALERTS{alertname="CarinspectDriftImage"}')}
    assert "brightness" in stats
    # and a rollout's analysis at this moment fails on them
    cfg = load_params(REPO_ROOT / "params.yaml").rollout
    with Prometheus(prom.url, 10) as asked:
        figures = {f.name: f for f in analyse(asked, cfg, "1", 30.0).figures}
    assert figures["drift_alerts"].passed is False and figures["drift_alerts"].value >= 2
