"""Crash-safe outputs keep the modes a plain write would give them (not mkstemp's 0600)."""

import os
import stat
from pathlib import Path

import pytest

from carinspect.io import staged_dir, write_json_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_are_readable_by_others_under_the_usual_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / "export"
        with staged_dir(out) as tmp:
            write_json_atomic(tmp / "model.json", {"a": 1})
        assert _mode(out) == 0o755  # mkdtemp alone gives 0700: unreadable in a container
        assert _mode(out / "model.json") == 0o644
    finally:
        os.umask(old)


def test_a_failed_block_leaves_the_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "export"
    with staged_dir(out) as tmp:
        (tmp / "a").write_text("first")
    with pytest.raises(RuntimeError), staged_dir(out) as tmp:
        (tmp / "a").write_text("second")
        raise RuntimeError("stage failed")
    assert (out / "a").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
