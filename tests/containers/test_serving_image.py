"""The serving image run as k8s/base's Deployment runs it: its user, read-only root, emptyDir
mounts, configMap and command, read from the rendered manifest; the model from a real
`mlflow server` through its artifact proxy; a promotion followed; SIGTERM drains."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import free_port
from tests.containers.conftest import Built, Engine
from tests.serving.hostile import storm
from tests.test_k8s import render

# the first test of a session waits for the images to build (about 10 minutes)
pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]


def photo(width: int = 2000, height: int = 1500, seed: int = 0) -> bytes:
    """A phone-sized JPEG: smooth colour fields with noise (not a tiny synthetic square)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width * 200, y / height * 180, (x + y) / (width + height) * 160], -1)
    noisy = base + rng.normal(0, 12, base.shape)
    buf = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def _deployment() -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(pod spec, serving container, configMap data) of k8s/base, as rendered."""
    docs = render("base")
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    return pod, pod["containers"][0], dict(config["data"])


def deployment_run_args(image: str, port: int, env: dict[str, str]) -> list[str]:
    """`docker run` arguments for the Deployment's pod, ``env`` overriding its configMap."""
    pod, container, config = _deployment()
    assert container["image"] == image, "k8s/base serves another image than the one built"
    sec, psec = container["securityContext"], pod["securityContext"]
    args = ["run", "-d", "--network", "host", "--user", f"{psec['runAsUser']}:{psec['runAsGroup']}"]
    if sec.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if sec.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for cap in sec.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    limits = container["resources"]["limits"]
    # the pod's memory limit, as the kubelet sets it: over it, the kernel OOM-kills the server
    args += ["--memory", str(limits["memory"]).replace("Gi", "g").replace("Mi", "m")]
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for mount in container["volumeMounts"]:
        assert mount["name"] in empty, f"{mount}: only emptyDir volumes are mirrored"
        # fsGroup makes an emptyDir writable by the pod's group
        args += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777"]
    for key, value in {**config, "CPU_LIMIT": "2", **env}.items():
        args += ["-e", f"{key}={value}"]
    command = [*container["command"], *container["args"]]
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = "127.0.0.1"  # host network: stay on loopback
    return [*args, image, *command]


def _register(server: str, name: str, upstream: dict[str, Path], tmp: Path) -> str:
    """A new version of ``name`` on the server (a run of its own): its number."""
    import mlflow

    from carinspect.config import RegisterConfig, Settings
    from carinspect.stages import register

    mlflow.set_tracking_uri(server)
    mlflow.set_experiment("container-serving")
    with mlflow.start_run() as run:
        mlflow.log_param("model.name", "test_resnet")
    out = tmp / f"registered-{time.monotonic_ns()}.json"
    register.run(RegisterConfig(model_name=name, require_better=False), Settings(), upstream["export"],
                 upstream["metrics"], run.info.run_id, out)  # fmt: skip
    return str(
        mlflow.tracking.MlflowClient(server).get_model_version_by_alias(name, "challenger").version
    )


@pytest.fixture()
def champion(
    mlflow_server: str, upstream: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A model name whose version 1 is champion on the server."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    name = f"served-{tmp_path.name[-8:]}"
    version = _register(mlflow_server, name, upstream, tmp_path)
    MlflowClient(mlflow_server).set_registered_model_alias(name, "champion", version)
    yield name


def _wait_ready(url: str, engine: Engine, cid: str, timeout: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        state = engine.docker("inspect", "--format", "{{.State.Status}}", cid).strip()
        if state != "running":
            raise AssertionError(f"container {state}: {engine.docker('logs', cid)[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no /readyz in {timeout} s: {engine.docker('logs', cid)[-3000:]}")


class _HeldBody:
    """A request body sent in two halves: the second only once ``release`` is set."""

    def __init__(self, head: bytes, tail: bytes, release: threading.Event) -> None:
        self.head, self.tail, self.release = head, tail, release
        self.started = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        self.started.set()
        self.release.wait(30)
        yield self.tail


def test_serving_image_runs_as_the_deployment(
    engine: Engine,
    images: dict[str, Built],
    mlflow_server: str,
    champion: str,
    upstream: dict[str, Path],
    tmp_path: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    pod, _, _ = _deployment()
    grace = float(pod["terminationGracePeriodSeconds"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"MODEL_URI": f"models:/{champion}@champion", "MLFLOW_TRACKING_URI": mlflow_server,
           "POLL_SECONDS": "1"}  # fmt: skip
    cid = engine.docker(*deployment_run_args(images["serving"].tag, port, env)).strip()
    try:
        _wait_ready(url, engine, cid)
        assert engine.docker("exec", cid, "id", "-u").strip() == "10001"
        written = engine.docker("exec", cid, "sh", "-c", "touch /opt/x 2>&1 || true")
        assert "Read-only file system" in written
        assert httpx.get(f"{url}/healthz").status_code == 200
        jpeg = photo()
        r = httpx.post(
            f"{url}/predict", files={"file": ("car.jpg", jpeg, "image/jpeg")}, timeout=30
        )
        assert r.status_code == 200, r.text
        assert r.json()["model"] == {"name": champion, "version": "1", "alias": "champion"}

        # a promotion while it runs: version 2 becomes champion and the server follows it
        v2 = _register(mlflow_server, champion, upstream, tmp_path)
        MlflowClient(mlflow_server).set_registered_model_alias(champion, "champion", v2)
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/model").json()["version"] != v2:
            assert time.monotonic() < deadline, engine.docker("logs", cid)[-3000:]
            time.sleep(0.5)
        r = httpx.post(
            f"{url}/predict", files={"file": ("car.jpg", jpeg, "image/jpeg")}, timeout=30
        )
        assert r.json()["model"]["version"] == v2

        # SIGTERM with requests in flight: each one's upload is half sent when the signal lands
        release = threading.Event()
        boundary = "carinspect-drain"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="car.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        body += jpeg + f"\r\n--{boundary}--\r\n".encode()
        held = [
            _HeldBody(body[: len(body) // 2], body[len(body) // 2 :], release) for _ in range(4)
        ]
        answers: list[int | str] = []

        def send(h: _HeldBody) -> None:
            try:
                resp = httpx.post(
                    f"{url}/predict", content=h, timeout=60,
                    headers={"content-type": f"multipart/form-data; boundary={boundary}",
                             "content-length": str(len(body))},
                )  # fmt: skip
                answers.append(resp.status_code)
            except httpx.HTTPError as err:
                answers.append(repr(err))

        threads = [threading.Thread(target=send, args=(h,)) for h in held]
        for th in threads:
            th.start()
        for h in held:
            assert h.started.wait(10)
        time.sleep(0.3)  # the halves are on the server's side of the socket
        signalled = time.monotonic()
        engine.docker("kill", "--signal", "TERM", cid)
        time.sleep(0.5)
        release.set()
        for th in threads:
            th.join(60)
        code = int(engine.docker("wait", cid, timeout=grace + 10).strip())
        took = time.monotonic() - signalled
        logs = engine.docker("logs", cid)
        assert answers == [200] * 4, (answers, logs[-3000:])
        assert code == 0, logs[-3000:]
        assert took < grace, f"exited {took:.1f} s after SIGTERM (grace {grace:.0f} s)"
    finally:
        engine.docker("rm", "-f", cid, check=False)


def test_serving_image_holds_a_hostile_storm_under_the_pod_memory_limit(
    engine: Engine, images: dict[str, Built], mlflow_server: str, champion: str
) -> None:
    """The storm of tests/serving/hostile.py against the image, run as the Deployment runs it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"MODEL_URI": f"models:/{champion}@champion", "MLFLOW_TRACKING_URI": mlflow_server,
           "HEADER_TIMEOUT_S": "3", "BODY_TIMEOUT_S": "3"}  # fmt: skip
    cid = engine.docker(*deployment_run_args(images["serving"].tag, port, env)).strip()
    try:
        _wait_ready(url, engine, cid)
        seen = storm(url)
        state = engine.docker("inspect", "-f", "{{.State.Running}} {{.State.OOMKilled}}", cid)
        assert state.split() == ["true", "false"], (state, engine.docker("logs", cid)[-3000:])
        assert not seen.problems(), seen.problems()
    finally:
        engine.docker("rm", "-f", cid, check=False)


def test_serving_image_keeps_feedback_photos_in_s3(
    engine: Engine,
    images: dict[str, Built],
    mlflow_server: str,
    champion: str,
    s3_endpoint: str,
) -> None:
    """FEEDBACK_DIR=s3://... in the image as the pod runs it: boto3 is there, the photo lands."""
    import hashlib
    import json

    import boto3

    boto3.client("s3").create_bucket(Bucket="served")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"MODEL_URI": f"models:/{champion}@champion", "MLFLOW_TRACKING_URI": mlflow_server,
           "FEEDBACK_DIR": "s3://served/feedback", "FEEDBACK_PERCENT": "100",
           **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                         "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}}  # fmt: skip
    cid = engine.docker(*deployment_run_args(images["serving"].tag, port, env)).strip()
    try:
        _wait_ready(url, engine, cid)
        jpeg = photo()
        r = httpx.post(
            f"{url}/predict", files={"file": ("car.jpg", jpeg, "image/jpeg")}, timeout=30
        )
        assert r.status_code == 200, r.text
        sha = hashlib.sha256(jpeg).hexdigest()
        key = f"feedback/{sha[:2]}/{sha}.json"
        deadline = time.monotonic() + 30
        s3 = boto3.client("s3")
        while True:
            listed = s3.list_objects_v2(Bucket="served", Prefix="feedback/").get("Contents", [])
            if any(o["Key"] == key for o in listed):
                break
            assert time.monotonic() < deadline, engine.docker("logs", cid)[-3000:]
            time.sleep(0.3)
        record = json.loads(s3.get_object(Bucket="served", Key=key)["Body"].read())
        assert record["sha256"] == sha and record["reasons"], record
        photo_key = f"feedback/{sha[:2]}/{sha}.jpg"
        assert s3.get_object(Bucket="served", Key=photo_key)["Body"].read() == jpeg
        assert "feedback sampling is off" not in engine.docker("logs", cid)
    finally:
        engine.docker("rm", "-f", cid, check=False)
