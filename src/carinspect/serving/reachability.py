"""Is the model registry there? A quick answer, so an outage shows at once on /model and /metrics.

MLflow's client retries a request that cannot connect for minutes (seven tries, exponential
back-off), and the poller waits with it: while the registry was down, /model said nothing was
wrong until the retries ran out. Each poll asks the tracking server's ``/health`` first, with a
short timeout, and skips the registry calls when it does not answer; the model serving now goes
on serving.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx


def registry_problem(uri: str, timeout_s: float) -> str | None:
    """Why the tracking store at ``uri`` cannot be reached now, or None when it can."""
    if uri.startswith(("http://", "https://")):
        insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
        verify: bool | str = not insecure and os.environ.get(
            "MLFLOW_TRACKING_SERVER_CERT_PATH", True
        )
        try:
            answer = httpx.get(uri.rstrip("/") + "/health", timeout=timeout_s, verify=verify)
        except httpx.HTTPError as err:
            return f"registry {uri} unreachable: {type(err).__name__}: {err}"
        if answer.status_code != 200:
            return f"registry {uri} unhealthy: /health answered HTTP {answer.status_code}"
        return None
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            return (
                f"registry {uri} unreachable: {path.resolve()} does not exist (run from the "
                "project folder, or set MLFLOW_TRACKING_URI)"
            )
    return None
