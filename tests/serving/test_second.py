"""Shadow and canary: a second alias beside the champion, through the real server and store.

The store holds three versions of one model that differ only in their decision rule, so their
answers are known: version 1 calls every car dirty, version 2 every car clean, version 3 uses
the rule it was trained with.
"""

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from carinspect.config import RegisterConfig, Settings
from carinspect.serving.app import create_app
from carinspect.serving.loaded import ModelLoadError
from carinspect.serving.second import client_bucket
from carinspect.serving.settings import ServeSettings
from carinspect.stages import register
from tests.serving.conftest import Server, image_bytes

NAME = "cars"


def _with_rule(export: Path, dest: Path, t: float | None) -> Path:
    """A copy of the export whose decision rule answers one class (t=1: dirty, t=0: clean)."""
    shutil.copytree(export, dest)
    if t is not None:
        card = json.loads((dest / "model.json").read_text())
        card["decision"].update(threshold=t, t_low=t, t_high=t)
        (dest / "model.json").write_text(json.dumps(card))
    return dest


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, upstream: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("second-registry")
    shutil.copy(upstream["tracking"], root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cwd = Path.cwd()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(root)
    try:
        for n, t in enumerate((1.0, 0.0, None), start=1):
            register.run(
                RegisterConfig(model_name=NAME, require_better=False), Settings(),
                _with_rule(upstream["export"], root / f"export{n}", t), upstream["metrics"],
                str(upstream["run_id"]), root / "registered.json",
            )  # fmt: skip
        client = MlflowClient(uri)
        client.set_registered_model_alias(NAME, "champion", "1")
        client.set_registered_model_alias(NAME, "challenger", "2")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.chdir(cwd)
    return root


@pytest.fixture()
def registry(tmp_path: Path, template: Path) -> str:
    shutil.copy(template / "mlflow.db", tmp_path / "registry.db")
    return f"sqlite:///{tmp_path / 'registry.db'}"


def _post(url: str, key: str | None = None) -> httpx.Response:
    headers = {"X-Client-Key": key} if key else {}
    files = {"file": ("car.jpg", image_bytes(), "image/jpeg")}
    return httpx.post(url + "/predict", files=files, headers=headers, timeout=30)


def _agreement(server: Server) -> dict[tuple[str, str], float]:
    text = httpx.get(server.url + "/metrics").text
    found = re.findall(
        r'carinspect_shadow_agreement_total\{challenger_class="(\w*)",champion_class="(\w*)",'
        r'task="\w+"\} ([\d.]+)',  # prometheus_client writes the labels sorted by name
        text,
    )
    return {(ours, theirs): float(n) for theirs, ours, n in found}


def _wait(check: Callable[[], bool], within: float, what: str, server: Server) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, (
            f"{what} not within {within} s:\n{server.log.read_text()}"
        )
        time.sleep(0.2)


def _champion_and(serve: Callable[..., Server], registry: str, **env: str) -> Server:
    """A server following the champion of the test's store, with ``env`` for the second alias."""
    return serve(MODEL_URI=f"models:/{NAME}@champion", MLFLOW_TRACKING_URI=registry, **env)


def _second(server: Server) -> dict:
    info: dict = httpx.get(server.url + "/model").json()["second"]
    return info


def test_shadow_counts_agreement_off_the_response_path_and_follows_its_alias(
    serve: Callable[..., Server], registry: str
) -> None:
    s = _champion_and(serve, registry, SHADOW="challenger", POLL_SECONDS="0.5")
    _wait(lambda: _second(s)["version"] == "2", 30, "shadow version 2 loaded", s)
    for _ in range(6):
        r = _post(s.url)
        assert r.status_code == 200 and r.json()["label"] == "dirty", r.text
        assert r.json()["model"] == {"name": NAME, "version": "1", "alias": "champion"}
    _wait(lambda: _agreement(s).get(("dirty", "clean"), 0) == 6, 10, "6 disagreements", s)
    assert "shadow disagrees on car.jpg: version 1 (champion) says dirty" in s.log.read_text()
    second = _second(s)
    assert second["mode"] == "shadow" and second["alias"] == "challenger"

    # the challenger alias moves under load: no request fails, the champion answers them all
    client = MlflowClient(registry)
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            r = _post(s.url)
            results.append((r.status_code, r.json().get("model", {}).get("version")))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        client.set_registered_model_alias(NAME, "challenger", "1")
        _wait(lambda: _second(s)["version"] == "1", 20, "shadow moved to version 1", s)
        client.set_registered_model_alias(NAME, "challenger", "3")
        _wait(lambda: _second(s)["version"] == "3", 20, "shadow moved to version 3", s)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert results and all(code == 200 and v == "1" for code, v in results), results[:5]
    assert _agreement(s).get(("dirty", "dirty"), 0) > 0  # while version 1 shadowed itself
    assert "ERROR" not in s.log.read_text()


def test_canary_answers_a_steady_share_of_clients_and_says_which_version(
    serve: Callable[..., Server], registry: str
) -> None:
    s = _champion_and(serve, registry, CANARY_PERCENT="50", POLL_SECONDS="0.5")
    _wait(lambda: _second(s)["version"] == "2", 30, "canary version 2 loaded", s)
    keys = [f"client-{i}" for i in range(24)]
    for key in keys:
        expected = "2" if client_bucket(key) < 5000 else "1"
        for _ in range(2):  # one client stays on one side
            body = _post(s.url, key).json()
            assert body["model"]["version"] == expected, (key, body)
            assert body["label"] == ("clean" if expected == "2" else "dirty")
            assert body["model"]["alias"] == ("challenger" if expected == "2" else "champion")
    sides = {client_bucket(k) < 5000 for k in keys}
    assert sides == {True, False}  # both answered someone
    info = httpx.get(s.url + "/model").json()
    assert info["version"] == "1" and info["second"]["canary_percent"] == 50.0

    MlflowClient(registry).set_registered_model_alias(NAME, "challenger", "3")
    _wait(lambda: _second(s)["version"] == "3", 20, "canary moved to version 3", s)
    canary_key = next(k for k in keys if client_bucket(k) < 5000)
    assert _post(s.url, canary_key).json()["model"]["version"] == "3"


def test_a_shadow_alias_not_there_yet_is_quiet(serve: Callable[..., Server], registry: str) -> None:
    s = _champion_and(serve, registry, SHADOW="next", POLL_SECONDS="0.3")
    time.sleep(3)  # about ten polls
    assert _post(s.url).json()["model"]["version"] == "1"
    second = _second(s)
    assert second["version"] is None and "no alias 'next' yet" in second["waiting_for"]
    assert second["reload_failures"] == 0
    log = s.log.read_text()
    assert log.count("waiting for models:/cars@next") == 1, log
    assert "ERROR" not in log, log
    MlflowClient(registry).set_registered_model_alias(NAME, "next", "2")
    _wait(lambda: _second(s)["version"] == "2", 20, "shadow loaded once its alias exists", s)
    _post(s.url)
    _wait(lambda: _agreement(s).get(("dirty", "clean"), 0) == 1, 10, "one comparison", s)


def test_second_alias_settings_refuse_what_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="one at a time"):
        ServeSettings(SHADOW="challenger", CANARY_PERCENT=10)
    with pytest.raises(ValidationError, match="CANARY_PERCENT"):
        ServeSettings(CANARY_PERCENT=101)
    with pytest.raises(ModelLoadError, match="is a folder"):
        create_app(ServeSettings(MODEL_URI=str(tmp_path), SHADOW="challenger"))
    with pytest.raises(ModelLoadError, match="already serves"):
        create_app(ServeSettings(MODEL_URI="models:/cars@champion", SHADOW="champion"))
    assert create_app(ServeSettings(MODEL_URI=str(tmp_path))).state.service.second is None
    with pytest.raises(ValidationError, match="SHADOW_PERCENT"):
        ServeSettings(SHADOW="challenger", SHADOW_PERCENT=0)


def test_shadow_percent_shadows_that_share_of_requests(
    serve: Callable[..., Server], registry: str
) -> None:
    s = _champion_and(serve, registry, SHADOW="challenger", SHADOW_PERCENT="25")
    _wait(lambda: _second(s)["version"] == "2", 30, "shadow version 2 loaded", s)
    for _ in range(80):
        assert _post(s.url).status_code == 200
    time.sleep(2)  # the comparisons in flight finish
    shadowed = _agreement(s).get(("dirty", "clean"), 0)
    assert 8 <= shadowed <= 32, shadowed  # 25% of 80 is 20; binomial spread well inside
