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
import tempfile
from pathlib import Path

from containers.engine import DockerError

logger = logging.getLogger(__name__)

PROJECT = "carinspect"


def _pip(args: list[str], isolated: bool = False) -> subprocess.CompletedProcess[str]:
    """Run this environment's pip; ``isolated``: no pip.conf, no PIP_* (only the given links)."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    env = dict(os.environ)
    if isolated:
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    logger.debug("running %s", " ".join(cmd))
    return subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)


def _missing(output: str) -> str | None:
    """The requirement pip found no wheel for, if that is why it failed.

    pip says "No matching distribution found for X", or, when a constraint pins X, that the
    constraint and the requirement conflict ("... depends on X==1.0").
    """
    found: list[str] = re.findall(r"No matching distribution found for (\S+)", output)
    if found:
        return found[-1]
    caused = output.partition("The conflict is caused by:")[2]
    found = re.findall(r"depends on (\S+)", caused)
    return found[0] if found else None


# what the carinspect wheel is built from (pyproject.toml's package dirs, and its readme)
PROJECT_FILES = ("pyproject.toml", "README.md", "src", "components", "pipelines")


def project_wheel(root: Path, dest: Path) -> Path:
    """Build the carinspect wheel from the checkout at ``root`` into ``dest``.

    From a copy of the package sources: setuptools reuses a build/ folder in the tree it
    builds, where a module deleted from src/ would live on in the wheel.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob(f"{PROJECT}-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="carinspect-src-") as tmp:
        src = Path(tmp)
        skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
        for name in PROJECT_FILES:
            if (root / name).is_dir():
                shutil.copytree(root / name, src / name, ignore=skip)
            else:
                shutil.copy2(root / name, src / name)
        done = _pip(["wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), str(src)])
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["pip failed with no output"]
        raise DockerError(f"pip wheel {root}: {lines[-1]}")
    return next(dest.glob(f"{PROJECT}-*.whl"))


def _failed(wheelhouse: Path, done: subprocess.CompletedProcess[str]) -> DockerError:
    """One line: the wheel pip found missing, or pip's last line."""
    missing = _missing(done.stdout + done.stderr)
    lines = done.stderr.strip().splitlines() or ["pip failed with no output"]
    return DockerError(
        f"wheelhouse {wheelhouse}: {f'no wheel for {missing}' if missing else lines[-1]}"
    )


def fill(wheelhouse: Path, project: Path, extras: str, constraints: Path) -> None:
    """Fetch (or build from sdists) every wheel ``carinspect[extras]`` needs into ``wheelhouse``.

    ``project`` is the carinspect wheel; its folder is searched first, and it is not copied in.
    """
    wheelhouse.mkdir(parents=True, exist_ok=True)
    logger.info("filling the wheelhouse %s for [%s] (network; once per cache)", wheelhouse, extras)
    done = _pip(["wheel", "-w", str(wheelhouse), "--find-links", str(project.parent),
                 "--find-links", str(wheelhouse), "-c", str(constraints),
                 f"{PROJECT}[{extras}]"])  # fmt: skip
    for built in wheelhouse.glob(f"{PROJECT}-*.whl"):  # the project's wheel is built per image
        built.unlink()
    if done.returncode != 0:
        raise _failed(wheelhouse, done)


def resolve(wheelhouse: Path, project: Path, extras: str, constraints: Path) -> list[Path]:
    """The wheels ``carinspect[extras]`` installs from ``wheelhouse`` alone (no index).

    Raises a DockerError naming the first requirement the wheelhouse has no wheel for.
    """
    report = project.parent / "resolve.json"
    done = _pip(["install", "--dry-run", "--ignore-installed", "--no-index",
                 "--find-links", str(wheelhouse), "--find-links", str(project.parent),
                 "-c", str(constraints), "--report", str(report),
                 f"{PROJECT}[{extras}]"], isolated=True)  # fmt: skip
    if done.returncode != 0:
        raise _failed(wheelhouse, done)
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
