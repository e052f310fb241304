"""A Debian bookworm base image made here: ``debootstrap`` a rootfs, trim it, ``docker import``.

No registry is reachable on the build machines, so ``python:3.11-slim`` cannot be pulled;
bookworm's python3.11 is the project's Python. The trimmed rootfs is kept as a tarball in the
cache folder (keyed by the package list), so a second build only re-imports it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from containers.engine import DockerError, docker, image_exists

logger = logging.getLogger(__name__)

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# python3.11-venv: ensurepip for the image's venv (python3-distutils: its virtual dependency, which
# debootstrap does not resolve); ca-certificates: TLS to an MLflow server or S3
PACKAGES = ("python3.11", "python3.11-venv", "python3-distutils", "ca-certificates")
BASE_TAG = f"carinspect-base:{SUITE}"
# what an image never needs at run time (docs, man pages, translations, apt's caches)
TRIM = (
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
    "var/cache/apt", "var/lib/apt/lists", "var/cache/debconf/templates.dat-old", "var/log",
)  # fmt: skip
# the image's configuration: python3.11 on PATH, UTF-8 without a locale package
CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
)


def _key(mirror: str) -> str:
    text = "\n".join((SUITE, mirror, *PACKAGES, *TRIM))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rootfs_tarball(cache: Path, mirror: str = MIRROR) -> Path:
    """The trimmed bookworm rootfs as a tarball in ``cache``, made with debootstrap if missing."""
    tarball = cache / f"rootfs-{SUITE}-{_key(mirror)}.tar"
    if tarball.is_file():
        return tarball
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise DockerError(
            "debootstrap is not installed (Debian: apt-get install debootstrap), and the base "
            f"image {BASE_TAG} is not there: install it, or pass --base python:3.11-slim-bookworm "
            "where a registry is reachable"
        )
    if os.geteuid() != 0:
        raise DockerError(f"debootstrap needs root to make {tarball.name}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        logger.info("debootstrap %s into %s (a minute or two, once per cache)", SUITE, root)
        cmd = [debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
               str(root), mirror]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = root / "debootstrap" / "debootstrap.log"
            text = (
                done.stdout
                + done.stderr
                + (log.read_text(errors="replace") if log.is_file() else "")
            )
            lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("W: See")]
            raise DockerError(f"debootstrap {SUITE} from {mirror}: {(lines or ['failed'])[-1]}")
        for rel in TRIM:
            target = root / rel
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
            elif target.exists():
                target.unlink()
        partial = Path(tmp) / tarball.name
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."],
                       check=True)  # fmt: skip
        partial.replace(tarball)
    return tarball


def base_image(cache: Path, mirror: str = MIRROR) -> str:
    """The tag of the debootstrap base image, imported into the daemon when it is not there."""
    if image_exists(BASE_TAG):
        return BASE_TAG
    tarball = rootfs_tarball(cache, mirror)
    args = ["import"]
    for change in CHANGES:
        args += ["--change", change]
    docker([*args, str(tarball), BASE_TAG], f"docker import {tarball}")
    logger.info("imported %s from %s", BASE_TAG, tarball)
    return BASE_TAG
