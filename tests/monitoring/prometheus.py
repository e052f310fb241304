"""A real Prometheus (Debian's) for the tests: started on a free port, stopped by process id."""

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import REPO_ROOT, free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@dataclass
class Prom:
    url: str
    proc: subprocess.Popen[bytes]

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10).json()
        assert body["status"] == "success", (promql, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def firing(self) -> set[str]:
        return {r["metric"]["alertname"] for r in self.query('ALERTS{alertstate="firing"}')}


def start_prometheus(root: Path, target: str) -> Prom:
    """Prometheus scraping ``target`` every second, with k8s/monitoring's rules (for: 0s)."""
    if not Path(PROMETHEUS).is_file():  # scripts/system.sh installs it: a skip would hide that
        missing = f"{PROMETHEUS}: not installed (scripts/system.sh installs Debian's prometheus)"
        if os.environ.get("CARINSPECT_SLOW") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    root.mkdir(parents=True, exist_ok=True)
    rules = yaml.safe_load((REPO_ROOT / "k8s/monitoring/prometheusrule.yaml").read_text())["spec"]
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    (root / "rules.yaml").write_text(yaml.safe_dump(rules))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(root / "rules.yaml")],
        "scrape_configs": [{"job_name": "serving", "static_configs": [{"targets": [target]}]}],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={root / 'prometheus.yml'}",
         f"--storage.tsdb.path={root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    prom = Prom(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, (root / "prometheus.log").read_text()[-3000:]
        time.sleep(0.3)
    return prom
