"""A real Label Studio (PyPI's, in its own virtual environment: scripts/labelstudio.sh).

Started once per session with a user, its personal access token made through the server's own
login and token API (as a reviewer gets one from Account & Settings), and stopped by process id.
"""

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, stop_process

DEFAULT_BIN = Path.home() / ".cache/carinspect/label-studio-1.23.2/venv/bin/label-studio"
USER, PASSWORD = "reviewer@example.com", "carinspect-review"


@dataclass(frozen=True)
class LabelStudioServer:
    url: str
    token: str  # a personal access token
    root: Path  # LOCAL_FILES_DOCUMENT_ROOT: folder logs go under it

    def session(self) -> httpx.Client:
        """An API client as the reviewer (for annotating as a person would)."""
        access = httpx.post(f"{self.url}/api/token/refresh", json={"refresh": self.token})
        access.raise_for_status()
        return httpx.Client(
            base_url=self.url, timeout=30,
            headers={"Authorization": f"Bearer {access.json()['access']}"},
        )  # fmt: skip


def _personal_token(url: str) -> str:
    """Log in through the login form, then create a personal access token."""
    with httpx.Client(base_url=url, timeout=30) as http:
        page = http.get("/user/login/")
        form = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert form, page.text[:500]
        done = http.post(
            "/user/login/", data={"email": USER, "password": PASSWORD,
                                  "csrfmiddlewaretoken": form.group(1)},
            headers={"Referer": f"{url}/user/login/"},
        )  # fmt: skip
        assert done.status_code == 302, done.text[:500]
        made = http.post(
            "/api/token/", json={},
            headers={"X-CSRFToken": http.cookies["csrftoken"], "Referer": f"{url}/"},
        )  # fmt: skip
        assert made.status_code == 201, made.text
        return str(made.json()["token"])


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    binary = Path(os.environ.get("LABEL_STUDIO_BIN", DEFAULT_BIN))
    if not binary.is_file():  # the slow tier installs it (scripts/system.sh): a skip would hide
        missing = f"{binary}: not installed (scripts/labelstudio.sh installs it)"
        if os.environ.get("CARINSPECT_SLOW") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    home = tmp_path_factory.mktemp("label-studio")
    root = home / "files"
    root.mkdir()
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root)}  # fmt: skip
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), "start", "--no-browser", "--data-dir", str(home / "data"), "-p", str(port),
         "--internal-host", "127.0.0.1", "--username", USER, "--password", PASSWORD],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # ~40-80 s: migrations on a fresh database
        while True:
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
            time.sleep(1)
        yield LabelStudioServer(url, _personal_token(url), root)
    finally:
        stop_process(proc, timeout=20)
        log.close()
