"""Every console example in README.md and docs/ is run, and its output compared by shape.

Sybil finds the examples: each ```console block, and the ``<!-- skip: next "reason" -->``
comments that mark one as illustrative (it needs a cluster, a GPU, the real photos, or it is
compared elsewhere; the reason says which). A block that is not marked is run, line by line
(``$ command`` then the output it shows), in one small project where the main job has run
(tiny model, demo data, embedded MLflow). Its output must have the shape shown: the same words,
columns and JSON keys in the same order; figures, ids and times may differ (tests/docs/shape.py).
A command ending in ``&`` is started in the background (a server) and stopped after the
document; ``8000`` in a document's commands is replaced with one free port.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import unittest
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser

from tests.conftest import REPO_ROOT, VENV_BIN, free_port, stop_process
from tests.docs.shape import first_mismatch, matches
from tests.e2e.project import DVC, make_project, sh

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


@dataclass
class Session:
    """The project the examples run in, and the servers a document started."""

    project: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)  # stands for 8000 in this document's commands
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.background:
            stop_process(proc)
        self.background.clear()


def _commands(source: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines shown for it) for every ``$`` line of a console block."""
    steps: list[tuple[str, list[str]]] = []
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            steps.append((command, []))
        elif steps:
            steps[-1][1].append(line)
        i += 1
    return steps


def _wait_for(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"background command exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"nothing ready on port {port} after 90 s")


def _run(session: Session, example: Example) -> None:
    port = session.port
    for command, shown in _commands(example.parsed):
        command = command.replace("8000", str(port))
        session.ran.append(command)
        if command.rstrip().endswith("&"):
            proc = subprocess.Popen(
                ["bash", "-c", command.rstrip().rstrip("&")],
                cwd=session.project,
                env=session.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            session.background.append(proc)
            _wait_for(port, proc)
            continue
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=session.project,
            env=session.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # interleaved as on a terminal
            text=True,
            timeout=600,
        )
        output = done.stdout.splitlines()
        refused = any(re.search(r"\bERROR\b|error", line) for line in shown)
        where = f"{Path(example.path).relative_to(REPO_ROOT)} line {example.line}: $ {command}"
        assert done.returncode == 0 or refused, (
            f"{where}\nexited with {done.returncode}:\n{done.stdout}"
        )
        if not any(line.strip() for line in shown):
            continue  # the docs show the command only: its output is not documented
        assert matches(shown, output), (
            f"{where}\nits output no longer has the shape the docs show "
            f"({first_mismatch(shown, output)}).\nshown:\n"
            + "\n".join(shown)
            + "\ngot:\n"
            + "\n".join(output)
        )


@pytest.fixture(scope="session")
def main_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The main job, shrunk (tiny model, 16 photos per class, 2 epochs), run once."""

    def shrink(params: dict) -> None:
        params["train"]["epochs"] = 2
        params["promote"]["floor"] = 0.0  # a two-epoch model still passes the gate

    project = make_project(tmp_path_factory.mktemp("docs"), change=shrink)
    shutil.copy(REPO_ROOT / "README.md", project / "README.md")  # an upload the docs refuse
    sh(project, DVC, "repro")
    return project


@pytest.fixture()
def session(main_job: Path, tmp_path: Path) -> Iterator[Session]:
    """A copy of the main job's project for one document, its MLflow store relocated into it."""
    project = tmp_path / "project"
    shutil.copytree(main_job, project, symlinks=True)
    (project / ".venv").symlink_to(VENV_BIN.parent)  # `source .venv/bin/activate` works
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MODEL_URI"))}
    env.update(
        PATH=f"{VENV_BIN}:{env['PATH']}",
        COLUMNS="200",
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",  # print and log lines in the order a terminal shows them
        CARINSPECT_USER="alice",  # who the docs' audit trails name
    )
    subprocess.run(
        [str(VENV_BIN / "carinspect"), "store", "relocate"], cwd=project, env=env, check=True
    )
    s = Session(project, env)
    yield s
    s.stop()


def _examples(path: Path) -> list[Example]:
    sybil = Sybil(parsers=[CodeBlockParser("console", evaluator=lambda e: None), SkipParser()])
    return list(sybil.parse(path))


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_console_examples_have_the_shape_shown(document: Path, session: Session) -> None:
    """Each unmarked console block of the document, run; marked ones need a reason."""
    skipped: list[str] = []
    try:
        for example in _examples(document):
            try:
                example.evaluate()  # a skip comment arms sybil's skipper for the next block
            except unittest.SkipTest as skip:
                skipped.append(str(skip))
                continue
            if isinstance(example.parsed, str):  # a console block (a skip comment is a tuple)
                _run(session, example)
    finally:
        session.stop()
    assert all(reason and reason != "next" for reason in skipped), (
        f"{document.name}: an illustrative example needs a reason: {skipped}"
    )


def test_skip_comments_are_well_formed() -> None:
    """A skip comment is `<!-- skip: next "why" -->` and is followed by a console block."""
    bad = []
    for path in DOCUMENTS:
        text = path.read_text()
        for m in re.finditer(r"<!-- skip: (.*?) -->\n+(.*)", text):
            args, following = m.group(1), m.group(2)
            if not re.fullmatch(r'next "[^"]{10,}"', args) or following != "```console":
                line = text[: m.start()].count("\n") + 1
                bad.append(f"{path.relative_to(REPO_ROOT)}:{line}: {m.group(0)[:80]!r}")
    assert not bad, "\n".join(bad)


def test_blocks_that_show_output_are_console_blocks() -> None:
    """Output shown in a plain or bash block would escape the check above."""
    bad = []
    for path in DOCUMENTS:
        for m in re.finditer(r"^```(\w*)\n(.*?)^```$", path.read_text(), re.S | re.M):
            language, body = m.group(1), m.group(2)
            if language in ("bash", "") and re.search(r"^\$ ", body, re.M):
                bad.append(f"{path.relative_to(REPO_ROOT)}: a ```{language} block with $ lines")
    assert not bad, "\n".join(bad)
