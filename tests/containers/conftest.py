"""The container tier: a dockerd of the tests' own (data root in a temp dir, stopped by pid) and
the images built in it by scripts/images.sh, the command users run.

Run with CARINSPECT_CONTAINERS=1 (.ci/run does). Where dockerd cannot start (not installed, not
root, no overlay support) every test here is skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from containers.build import IMAGES

from tests.conftest import REPO_ROOT, stop_process


@dataclass(frozen=True)
class Engine:
    """The tests' dockerd: DOCKER_HOST for its clients, its log."""

    host: str
    log: Path

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        """Run a docker command against this daemon; its stdout."""
        done = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "DOCKER_HOST": self.host},
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout


def _start_failure(proc: subprocess.Popen[bytes], log: Path) -> str | None:
    if proc.poll() is None:
        return None
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return f"dockerd exited with {proc.returncode}: {(lines or ['no output'])[-1][-300:]}"


def _unmount_below(root: Path) -> None:
    """Unmount what dockerd left mounted under ``root`` (its netns bind mount), deepest first."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """dockerd with its own data and exec roots under a temp dir; no bridge (host networking)."""
    dockerd = shutil.which("dockerd")
    if dockerd is None or shutil.which("docker") is None:
        pytest.skip("dockerd is not installed (scripts/system.sh installs docker.io as root)")
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root here (rootless docker is not set up)")
    root = Path(tempfile.mkdtemp(prefix="carinspect-dockerd-"))
    log = root / "dockerd.log"
    host = f"unix://{root / 'docker.sock'}"
    proc = subprocess.Popen(
        [dockerd, "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
         "--pidfile", str(root / "dockerd.pid"), "--host", host, "--bridge", "none",
         "--iptables=false"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    engine = Engine(host, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            failed = _start_failure(proc, log)
            if failed:
                pytest.skip(failed)
            ok = subprocess.run(
                ["docker", "version"], capture_output=True,
                env={**os.environ, "DOCKER_HOST": host},
            ).returncode == 0  # fmt: skip
            if ok:
                break
            if time.monotonic() > deadline:
                pytest.skip(f"dockerd did not answer in 60 s: {log.read_text()[-300:]}")
            time.sleep(0.5)
        yield engine
    finally:
        for cid in engine.docker("ps", "-q", check=False).split() if proc.poll() is None else []:
            engine.docker("rm", "-f", cid, check=False)
        stop_process(proc, timeout=60)
        _unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Built:
    """What scripts/images.sh printed for one image."""

    tag: str
    size_mb: float
    id: str


@pytest.fixture(scope="session")
def images(engine: Engine) -> dict[str, Built]:
    """The serving and pipeline images, built by the CLI in the tests' daemon."""
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "images.sh"), "serving", "pipeline"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=3000,
        env={**os.environ, "DOCKER_HOST": engine.host},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    built = {}
    for line in done.stdout.splitlines():
        tag, size, unit, image_id = line.split()
        assert unit == "MB", line
        name = next(n for n, spec in IMAGES.items() if spec.tag == tag)
        built[name] = Built(tag, float(size), image_id)
    assert set(built) == {"serving", "pipeline"}, done.stdout
    return built
