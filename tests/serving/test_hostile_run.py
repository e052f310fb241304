"""The hostile-client run as a test: every case at once, beside normal traffic, under the pod's limit.

A real `carinspect serve` with the Deployment's settings, moved into a memory cgroup with the
Deployment's limit where this machine lets a test make one (an overshoot is then an OOM kill,
as in the pod), and its peak resident set checked against that limit either way. While the
hostile cases run (each twice, and four of the worst decodable uploads at once), two clients
keep sending phone photos and one asks /healthz every 200 ms.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT, start_server, stop_process
from tests.serving.hostile import (
    DECODE_BUDGET,
    cases,
    memory_cgroup,
    memory_kib,
    move_into,
    phone_photo,
    post_files,
    remove_cgroup,
    sixteen_bit_png,
    worst_decodable_side,
)


def _deployment_memory_limit() -> int:
    """limits.memory of the serving container in k8s/base, in bytes."""
    deployment = yaml.safe_load((REPO_ROOT / "k8s/base/deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    value = str(container["resources"]["limits"]["memory"])
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", value).groups()  # type: ignore[union-attr]
    return int(number) * {"Mi": 2**20, "Gi": 2**30}[unit]


@pytest.mark.slow
def test_hostile_clients_get_answers_and_the_server_stays_up(
    tmp_path: Path, upstream: dict[str, Path]
) -> None:
    limit = _deployment_memory_limit()
    server = start_server(
        tmp_path,
        {"MODEL_URI": str(upstream["export"]), "HEADER_TIMEOUT_S": "3", "BODY_TIMEOUT_S": "3"},
    )
    group = memory_cgroup(limit, f"carinspect-hostile-{server.proc.pid}")
    if group is not None:
        move_into(group, server.proc.pid)
    stop = threading.Event()
    normal: list[int] = []
    health: list[float] = []
    photo = phone_photo()

    def normal_client() -> None:
        while not stop.is_set():
            normal.append(post_files(server.url, "/predict", "file", [("car.jpg", photo)]))

    def health_client() -> None:
        while not stop.wait(0.2):
            started = time.monotonic()
            try:
                ok = httpx.get(server.url + "/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                ok = False
            health.append(time.monotonic() - started if ok else float("inf"))

    idle = []
    background = [threading.Thread(target=normal_client) for _ in range(2)]
    background.append(threading.Thread(target=health_client))
    try:
        for thread in background:
            thread.start()
        for _ in range(100):  # a slowloris: connections that never send a byte
            idle.append(socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))))
        hostile = cases() * 2
        worst = sixteen_bit_png(worst_decodable_side(DECODE_BUDGET))
        with ThreadPoolExecutor(max_workers=len(hostile) + 4) as pool:
            answers = [(c, pool.submit(c.send, server.url)) for c in hostile]
            four = [
                pool.submit(post_files, server.url, "/predict", "file", [("g.png", worst)])
                for _ in range(4)
            ]
            got = [(c, f.result()) for c, f in answers]
            four_at_once = [f.result() for f in four]
        time.sleep(1)  # normal traffic goes on after the storm
        stop.set()
        for thread in background:
            thread.join()
        assert server.proc.poll() is None, server.log.read_text()[-3000:]
        unfair = [(c.name, status) for c, status in got if status not in c.fair]
        assert not unfair, unfair
        assert all(s in (200, 503) for s in four_at_once), four_at_once
        assert normal and all(s == 200 for s in normal), sorted(set(normal))
        assert health and max(health) < 1.0, f"/healthz took {max(health):.2f} s"
        metrics = httpx.get(server.url + "/metrics").text
        assert not re.search(r'status="5\d\d"} [1-9]', metrics.replace('status="503"', "")), [
            line for line in metrics.splitlines() if 'status="5' in line
        ]
        peak = memory_kib(server.proc.pid) * 1024
        assert peak < limit, f"peak {peak / 2**20:.0f} MiB over the pod's {limit / 2**20:.0f} MiB"
    finally:
        stop.set()
        for sock in idle:
            sock.close()
        stop_process(server.proc)
        if group is not None:
            remove_cgroup(group)
