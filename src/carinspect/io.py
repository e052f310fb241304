"""Crash-safe output: everything is written under a temporary sibling, then renamed into place.

An interrupted or failed stage therefore leaves either the previous complete output or nothing,
never a half-written one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from carinspect.errors import OutputError


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.cache
def _umask() -> int:
    """The process's umask, read once (reading it means setting it, which races with threads)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(path: Path, directory: bool = False) -> None:
    """Give a temporary file or folder the mode a plain open()/mkdir() would have.

    mkstemp and mkdtemp make them private (0600, 0700): an output that keeps that mode cannot
    be read by another user, such as the uid 10001 of a container the folder is mounted into.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _remove_stale(final: Path, home: Path) -> None:
    """Delete the staging folders of ``final`` (in ``home``) left by runs that were killed."""
    for leftover in home.glob(f".{final.name}.tmp-*"):
        pid = leftover.name[len(f".{final.name}.tmp-") :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _inside(final: Path) -> bool:
    """Whether ``final`` is a mount point (a volume): it cannot be renamed, so it is staged inside.

    A volume may also be another file system than its parent, where a rename cannot reach.
    """
    if not final.is_dir():
        return False
    return os.path.ismount(final) or final.stat().st_dev != final.parent.stat().st_dev


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``final`` when the block succeeds.

    The temporary name carries the process id, so a later run can tell the leftovers of a
    killed run from those of a run still in progress, and removes the former. A ``final`` that
    is a mount point (a volume at models/export) is staged inside itself and its contents are
    replaced, not the folder. Any OSError becomes an :class:`OutputError` naming ``final`` and
    the cause (no space, read-only, busy), and the staging folder is removed.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        inside = _inside(final)
        home = final if inside else final.parent
        _remove_stale(final, home)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=home))
        default_mode(tmp, directory=True)
    except OSError as err:
        raise OutputError(final, err) from err
    try:
        yield tmp
        _swap_in(tmp, final, inside)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise OutputError(final, err) from err
        raise


def _swap_in(tmp: Path, final: Path, inside: bool) -> None:
    """Put the complete staging folder ``tmp`` in the place of ``final``."""
    kept = final / ".gitignore"  # written by DVC for the outputs inside; not the stage's to drop
    if kept.is_file() and not (tmp / ".gitignore").exists():
        shutil.copy2(kept, tmp / ".gitignore")
    if inside:  # a mount point: empty it (but the staging folder), then move the new entries in
        for entry in final.iterdir():
            if entry != tmp:
                shutil.rmtree(
                    entry
                ) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for entry in tmp.iterdir():
            os.replace(entry, final / entry.name)
        tmp.rmdir()
        return
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def json_ready(obj: Any, digits: int = 6) -> Any:
    """Round floats for reports; NaN (undefined on a small split) becomes null, valid JSON."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else round(obj, digits)
    if isinstance(obj, dict):
        return {k: json_ready(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v, digits) for v in obj]
    return obj


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    An OSError (no space, read-only) becomes an :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    except OSError as err:
        raise OutputError(path, err) from err
    try:
        default_mode(Path(tmp), directory=False)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise OutputError(path, err) from err
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
