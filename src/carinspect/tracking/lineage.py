"""Lineage facts every model version carries: data digest and source, git commit, KFP run."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from carinspect.config import Settings
from carinspect.contracts.folders import IngestDir


def _git(*args: str, cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, check=True, cwd=cwd
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(cwd: Path | None = None) -> dict[str, str]:
    """Commit of the repository at ``cwd`` (the working directory) and whether it is dirty.

    Dirty: tracked files differ from the commit.
    """
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if commit is None:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return {"git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


def data_lineage(ingest_dir: Path) -> dict[str, str]:
    """Digest of manifest.csv (what the model was trained on) and the source it came from.

    Shards: also where they are (the manifest names them by content, so the digest pins them).
    """
    manifest = IngestDir(ingest_dir).manifest
    tags = {"data.digest": "sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()}
    report = IngestDir(ingest_dir).report
    if report.is_file():
        source = json.loads(report.read_text()).get("source", {})
        tags["data.source"] = str(source.get("uri", "unknown"))
        tags["data.source_kind"] = str(source.get("kind", "unknown"))
        storage = json.loads(report.read_text()).get("storage")
        if storage and storage.get("format") == "shards":  # where the images were read from
            tags["data.format"] = "shards"
            tags["data.shards"] = str(storage["location"])
    return tags


def lineage_tags(ingest_dir: Path, settings: Settings) -> dict[str, str]:
    """All lineage tags for a run or model version.

    Outside a checkout (a KFP task's container) the commit is the one the image was built
    from, which the image carries in its environment.
    """
    git = git_state()
    if git["git.commit"] == "unknown" and settings.image_git_commit:
        git = {"git.commit": settings.image_git_commit,
               "git.dirty": settings.image_git_dirty or "unknown"}  # fmt: skip
    tags = {**data_lineage(ingest_dir), **git}
    if settings.kfp_run_id:
        tags["kfp.run_id"] = settings.kfp_run_id
    return tags
