"""Errors the CLI prints as one line, without a traceback: bad input, and outputs it cannot write."""

from __future__ import annotations

import errno
from pathlib import Path


class InputError(ValueError):
    """Bad input: the message names the input and what is wrong with it."""


_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EBUSY: "busy (a mount point, or in use)",
    errno.EXDEV: "on another device than its staging folder",
    errno.EIO: "an I/O error",
}


class OutputError(OSError):
    """An output that could not be written: the message names the path and the cause."""

    def __init__(self, path: Path | str, err: OSError) -> None:
        cause = _CAUSES.get(err.errno or 0, err.strerror or str(err))
        name = errno.errorcode.get(err.errno or 0, "")
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
        super().__init__(
            err.errno, f"cannot write {path}: {cause}{f' [{name}]' if name else ''}{where}"
        )
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.strerror)
