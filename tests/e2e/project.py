"""A copy of the project's pipeline in a fresh git repo, for `dvc repro` in a test."""

import hashlib
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT, VENV_BIN

DVC = str(VENV_BIN / "dvc")


def sh(cwd: Path, *args: str) -> str:
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{args} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".dvc" not in p.parts and ".git" not in p.parts
    }


def copy_project(tmp_path: Path, params: bool = False) -> Path:
    """The project's dvc.yaml, src, tune and DVC config (and params.yaml as shipped, when
    ``params``) in ``tmp_path/project``, not yet a git repo."""
    repo = tmp_path / "project"
    repo.mkdir()
    names = ["dvc.yaml", ".dvcignore", "src", "data/feedback/README.md"]
    for name in [*names, *(["params.yaml"] if params else [])]:
        src, dst = REPO_ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    (repo / ".dvc").mkdir()
    shutil.copy(REPO_ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    return repo


def commit_all(repo: Path, message: str = "init") -> None:
    """``git init`` (once) and commit everything in ``repo``."""
    if not (repo / ".git").exists():
        sh(repo, "git", "init", "-q")
    sh(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    sh(repo, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message)


def make_project(
    tmp_path: Path, change: Callable[[dict], None] | None = None, **demo: object
) -> Path:
    """The project's dvc.yaml, src and params (tiny model; ``demo`` overrides data.demo,
    ``change`` edits the params further)."""
    repo = copy_project(tmp_path)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["demo"].update({"per_class": 16, **demo})
    params["model"].update({"name": "test_resnet", "img_size": 32})
    params["train"].update({"epochs": 1, "batch_size": 4, "workers": 0})
    params["threshold"]["allow_fallback"] = True  # a one-epoch model may not reach the target
    # nor be shown better than the baseline on a few test photos (test_own_photos.py is the
    # verdict's test, with the shipped params)
    params["register"]["require_better"] = False
    if change is not None:
        change(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    commit_all(repo)
    return repo
