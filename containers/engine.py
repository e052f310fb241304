"""The Docker engine through its CLI: one place that runs ``docker`` and words its failures.

The CLI (not the Python SDK) so that every command the builder runs can be copied into a
shell as it is logged. ``DOCKER_HOST`` picks the daemon, as it does for ``docker`` itself.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from carinspect.errors import InputError

logger = logging.getLogger(__name__)


class DockerError(InputError):
    """The engine is missing or unreachable, or a docker command failed."""


@dataclass(frozen=True)
class ImageInfo:
    """What ``docker image inspect`` says of a built image."""

    tag: str
    id: str
    size: int  # bytes on disk, uncompressed (docker image inspect .Size)

    @property
    def size_mb(self) -> float:
        """Size in MB (10^6 bytes, as docker prints it)."""
        return self.size / 1e6


def docker_bin() -> str:
    """The docker CLI on PATH, or an error saying how to get one."""
    found = shutil.which("docker")
    if found is None:
        raise DockerError(
            "docker: the docker CLI is not on PATH (Debian: apt-get install docker.io)"
        )
    return found


def docker_env() -> dict[str, str]:
    """The environment for docker commands: the classic builder (no buildx plugin needed).

    The classic builder runs a build's RUN steps with ``--network none`` and takes multi-stage
    files; BuildKit would need the buildx plugin, which Debian bookworm does not package.
    """
    return {**os.environ, "DOCKER_BUILDKIT": "0"}


def docker(args: Sequence[str], what: str, timeout: float | None = None) -> str:
    """Run ``docker <args>``; its stdout, or a DockerError naming ``what`` and docker's reason."""
    cmd = [docker_bin(), *args]
    logger.debug("running %s", " ".join(cmd))
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=docker_env(), timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise DockerError(f"{what}: docker {args[0]} took more than {timeout:.0f} s") from err
    if done.returncode != 0:
        reason = _last_error_line(done.stderr or done.stdout)
        raise DockerError(f"{what}: {reason}")
    return done.stdout


def _last_error_line(text: str) -> str:
    """The line of docker's output that says what went wrong (its last non-empty line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith(("error", "cannot connect"))]
    return (errors or lines or ["failed with no output"])[-1]


def check_daemon() -> str:
    """The daemon's version, or one error line saying it cannot be reached (and where)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        return docker(["version", "--format", "{{.Server.Version}}"], f"dockerd at {host}", 30)
    except DockerError as err:
        raise DockerError(
            f"dockerd at {host} is not reachable: {str(err).split(': ', 1)[-1]} "
            "(start it as root: dockerd &, or set DOCKER_HOST)"
        ) from None


def image_exists(ref: str) -> bool:
    """Whether the daemon has image ``ref`` (no pull is tried: no registry is assumed)."""
    cmd = [docker_bin(), "image", "inspect", "--format", "{{.Id}}", ref]
    done = subprocess.run(cmd, capture_output=True, text=True, env=docker_env(), check=False)
    return done.returncode == 0


def inspect_image(ref: str) -> ImageInfo:
    """Id and size of a local image."""
    raw: list[dict[str, Any]] = json.loads(docker(["image", "inspect", ref], f"image {ref}"))
    return ImageInfo(tag=ref, id=str(raw[0]["Id"]), size=int(raw[0]["Size"]))
