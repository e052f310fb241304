"""Crash-safe outputs: the modes a plain write gives, volumes as output folders, a full disk."""

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from carinspect.errors import OutputError
from carinspect.io import staged_dir, write_bytes_atomic, write_json_atomic
from tests.conftest import REPO_ROOT, VENV_BIN


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


@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (a volume, as a pod mounts one), unmounted after."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_an_output_folder_that_is_a_mount_point_gets_its_contents_replaced(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "export", "8m") as volume:
        (volume / "old.txt").write_text("previous output")
        with staged_dir(volume) as staged:
            (staged / "model.json").write_text("{}")
        assert os.path.ismount(volume)
        assert sorted(p.name for p in volume.iterdir()) == ["model.json"]


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_no_staging(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "disk", "64k") as disk:
        out = disk / "demo"
        done = subprocess.run(
            [str(VENV_BIN / "carinspect"), "data", "demo", "--out", str(out)],
            capture_output=True, text=True, cwd=REPO_ROOT,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, done.stderr
        assert f"cannot write {out}: no space left on the device [ENOSPC]" in lines[0]
        assert not any(p.name.startswith(".demo.tmp-") for p in disk.iterdir())
        with pytest.raises(OutputError, match="no space left"):
            write_bytes_atomic(disk / "big.bin", b"x" * 200_000)
        assert list(disk.iterdir()) == []
