"""The docs site: `mkdocs build --strict` passes, catches a broken link, and works in a browser.

The reference pages are generated (docs/hooks.py): every params.yaml section has its table on
some page, the CLI page lists every command `carinspect --help` knows, and the settings page
every variable the serving settings read.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    REPO_ROOT,
    VENV_BIN,
    free_port,
    offline_page,
    stop_process,
    wait_for_port,
)


def _load_hooks() -> Any:
    """docs/hooks.py, the generator mkdocs runs (not a package: loaded from its path)."""
    spec = importlib.util.spec_from_file_location(
        "carinspect_docs_hooks", REPO_ROOT / "docs" / "hooks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()

ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = build(REPO_ROOT, out)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def test_strict_build_fails_on_a_broken_link_and_a_broken_anchor(tmp_path: Path) -> None:
    """The strictness is real: a link to a missing page or heading fails the build."""
    for name in ("mkdocs.yml", "docs", "src"):
        src = REPO_ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    page = tmp_path / "docs" / "benchmarks.md"
    for broken in ("[gone](no-such-page.md)", "[gone](serving.md#no-such-heading)"):
        page.write_text(page.read_text() + f"\n{broken}\n")
        done = build(tmp_path, tmp_path / "site")
        assert done.returncode != 0, f"{broken} did not fail the build"
        assert "no-such" in done.stdout + done.stderr
        page.write_text(page.read_text().replace(f"\n{broken}\n", ""))


def test_every_params_section_has_its_generated_table() -> None:
    from carinspect.config import Params

    sections = {info.alias or name for name, info in Params.model_fields.items()}
    asked = set()
    for path in (REPO_ROOT / "docs").rglob("*.md"):
        asked |= set(re.findall(r"<!-- carinspect:params (\w+) -->", path.read_text()))
    assert sections <= asked, f"sections without a table in docs/: {sorted(sections - asked)}"


def test_committed_tables_are_what_the_code_generates() -> None:
    """The pages read whole on GitHub: each table is committed, and stale is a failure."""
    stale = [
        str(path.relative_to(REPO_ROOT))
        for path in sorted((REPO_ROOT / "docs").rglob("*.md"))
        if hooks.refreshed(text := path.read_text()) != text
    ]
    assert not stale, f"stale reference tables in {stale}: run `python docs/hooks.py`"
    cli = (REPO_ROOT / "docs" / "cli.md").read_text()
    assert "### `carinspect summary`" in cli and hooks.END in cli


def test_generated_tables_follow_the_code(site: Path) -> None:
    """A new key, setting or command shows up in the built site without editing the docs."""
    from carinspect.config import TrainConfig
    from carinspect.serving.settings import ServeSettings

    train = (site / "stages" / "train" / "index.html").read_text()
    for key in TrainConfig.model_fields:
        assert f"train.{key}" in train
    settings = (site / "settings" / "index.html").read_text()
    for info in ServeSettings.model_fields.values():
        assert f"<code>{info.validation_alias}</code>" in settings
    cli = (site / "cli" / "index.html").read_text()
    helped = subprocess.run(
        [str(VENV_BIN / "carinspect"), "--help"],
        capture_output=True,
        text=True,
        env={**ENV, "COLUMNS": "200"},
        check=True,
    ).stdout
    commands = re.findall(r"^  (\w[\w-]*)\s{2,}", helped.split("Commands:", 1)[1], re.M)
    assert len(commands) > 15, helped
    for command in commands:
        assert f"carinspect {command}</code>" in cli, f"{command} is not in the CLI page"
    assert "carinspect pipeline run</code>" in cli and "--runner" in cli


def test_params_table_names_type_default_and_bounds() -> None:
    table = hooks.params_table("train")
    assert "| `train.epochs` | int | `15` | >= 1 |" in table
    assert "`adamw` \\| `sgd`" in table  # a Literal lists its values
    with pytest.raises(ValueError, match="not one of"):
        hooks.params_table("trian")


@pytest.fixture(scope="module")
def served_site(site: Path) -> Iterator[str]:
    """The built site over HTTP (search loads its index with fetch, which file:// refuses)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=site,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


def test_site_navigation_and_search_in_a_browser(browser: Any, served_site: str) -> None:
    """One page in headless chromium, offline: the navigation lists the sections, and the
    search box finds the page that explains promotion among its results and opens one."""
    with offline_page(browser, served_site) as (page, outside):
        _navigate_and_search(page, served_site)
    assert not outside, f"the site asked for things outside it: {outside}"


def _navigate_and_search(page: Any, served_site: str) -> None:
    page.goto(f"{served_site}/getting-started/")
    nav = page.locator("nav.md-nav--primary").inner_text()
    for title in (
        "Getting started",
        "Stage: train",
        "Kubeflow Pipelines and Trainer",
        "Command line",
    ):
        assert title in nav, nav
    page.locator("label.md-search__icon, .md-search__input").first.click()
    page.keyboard.type("champion")
    results = page.locator(".md-search-result__item")
    results.first.wait_for()
    found = page.locator(".md-search-result").inner_text()
    assert "MLflow: review runs, promote a version" in found, found  # the page on promotion
    page.locator(".md-search-result__link").first.click()
    page.wait_for_load_state()
    assert "h=champion" in page.url, page.url  # the result opens with the word highlighted
    assert "champion" in page.locator("article").inner_text()
