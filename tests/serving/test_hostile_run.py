"""The hostile-client run as a test: every case at once, beside normal traffic, under the pod's limit.

A real `carinspect serve` with the Deployment's settings, moved into a memory cgroup with the
Deployment's limit where this machine lets a test make one (an overshoot is then an OOM kill,
as in the pod), and its peak resident set checked against that limit either way. The storm
(tests/serving/hostile.py): each hostile case twice, four of the worst decodable uploads at once
and a slowloris, while two clients keep sending phone photos and one asks /healthz every 200 ms.
The container tier runs the same storm against the serving image under `docker run --memory`
(tests/containers/test_serving_image.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT, start_server, stop_process
from tests.serving.hostile import memory_cgroup, memory_kib, move_into, remove_cgroup, storm


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
    try:
        seen = storm(server.url)
        assert server.proc.poll() is None, server.log.read_text()[-3000:]
        assert not seen.problems(), seen.problems()
        metrics = httpx.get(server.url + "/metrics").text
        errors = [
            line for line in metrics.splitlines() if re.search(r'status="5\d\d"} [1-9]', line)
        ]
        assert all('status="503"' in line for line in errors), errors
        peak = memory_kib(server.proc.pid) * 1024
        assert peak < limit, f"peak {peak / 2**20:.0f} MiB over the pod's {limit / 2**20:.0f} MiB"
    finally:
        stop_process(server.proc)
        if group is not None:
            remove_cgroup(group)
