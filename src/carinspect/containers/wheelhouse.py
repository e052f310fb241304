"""The wheelhouse: every wheel an image installs, fetched on the host so builds need no network.

``pip wheel`` fills one folder in the cache from PyPI (torch from local disk, as scripts/env.sh
takes it) with the project's constraints; each build resolves its extras against that folder
with ``--no-index`` and hard-links exactly the wheels it needs into its build context, so the
image's ``pip install --no-index`` sees nothing else and the same pins give the same image.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from carinspect.containers.engine import DockerError

logger = logging.getLogger(__name__)

PROJECT = "carinspect"


def _pip(args: list[str], what: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    logger.debug("running %s", " ".join(cmd))
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _missing(stderr: str) -> str | None:
    """The requirement pip could not find a distribution for, if that is why it failed."""
    found = re.findall(r"No matching distribution found for (\S+)", stderr)
    return found[-1] if found else None


def project_wheel(root: Path, dest: Path) -> Path:
    """Build the carinspect wheel from the checkout at ``root`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob(f"{PROJECT}-*.whl"):
        old.unlink()
    done = _pip(["wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), str(root)],
                f"the {PROJECT} wheel")  # fmt: skip
    if done.returncode != 0:
        raise DockerError(f"pip wheel {root}: {done.stderr.strip().splitlines()[-1:]}")
    return next(dest.glob(f"{PROJECT}-*.whl"))


def fill(wheelhouse: Path, root: Path, extras: str, constraints: Path) -> None:
    """Fetch (or build from sdists) every wheel ``carinspect[extras]`` needs into ``wheelhouse``."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    logger.info("filling the wheelhouse %s for [%s] (network; once per cache)", wheelhouse, extras)
    done = _pip(["wheel", "-w", str(wheelhouse), "--find-links", str(wheelhouse),
                 "-c", str(constraints), f"{root}[{extras}]"], "wheelhouse")  # fmt: skip
    for built in wheelhouse.glob(f"{PROJECT}-*.whl"):  # the project's wheel is built per image
        built.unlink()
    if done.returncode != 0:
        missing = _missing(done.stderr)
        reason = f"no wheel for {missing}" if missing else done.stderr.strip().splitlines()[-1]
        raise DockerError(f"wheelhouse {wheelhouse}: {reason}")


def resolve(wheelhouse: Path, project: Path, extras: str, constraints: Path) -> list[Path]:
    """The wheels ``carinspect[extras]`` installs from ``wheelhouse`` alone (no index).

    Raises a DockerError naming the first requirement the wheelhouse has no wheel for.
    """
    report = project.parent / "resolve.json"
    done = _pip(["install", "--dry-run", "--ignore-installed", "--no-index", "--quiet",
                 "--find-links", str(wheelhouse), "--find-links", str(project.parent),
                 "-c", str(constraints), "--report", str(report),
                 f"{PROJECT}[{extras}]"], "resolve")  # fmt: skip
    if done.returncode != 0:
        missing = _missing(done.stderr)
        reason = f"no wheel for {missing}" if missing else done.stderr.strip().splitlines()[-1]
        raise DockerError(f"wheelhouse {wheelhouse}: {reason}")
    installs = json.loads(report.read_text())["install"]
    report.unlink()
    files = []
    for item in installs:
        url = str(item["download_info"]["url"])
        if not url.startswith("file://"):
            raise DockerError(f"wheelhouse {wheelhouse}: {url} is not a local file")
        files.append(Path(url.removeprefix("file://")))
    return files


def stage(files: list[Path], dest: Path) -> None:
    """Put ``files`` into ``dest`` (hard links where one file system holds both, else copies)."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in files:
        target = dest / src.name
        if target.exists():
            continue
        try:
            os.link(src, target)
        except OSError:
            shutil.copy2(src, target)
