"""docs/layout.md is the project's map: every top-level folder and every package is on it."""

import re
import subprocess

from tests.conftest import REPO_ROOT

LAYOUT = (REPO_ROOT / "docs" / "layout.md").read_text()


def _named(folder: str) -> bool:
    return re.search(rf"(^|[\s(,]){re.escape(folder)}/", LAYOUT, re.M) is not None


def test_every_top_level_folder_and_package_is_on_the_map() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    top = {p.split("/")[0] for p in tracked if "/" in p and not p.startswith(".")}
    packages = {p.parent.name for p in (REPO_ROOT / "src" / "carinspect").glob("*/__init__.py")}
    assert len(top) > 10 and len(packages) > 5  # the test reads the tree
    missing = sorted(f for f in top | packages if not _named(f))
    assert not missing, f"docs/layout.md does not name {missing}"
