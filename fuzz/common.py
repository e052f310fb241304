"""What the fuzz targets share: seeding from the malformed-image corpus, and the run's flags.

A target is a libFuzzer binary in Python (atheris): the arguments are libFuzzer's, e.g.
``-max_total_time=60 -timeout=10 -rss_limit_mb=2048 CORPUS_DIR``. The first corpus folder is
filled with seeds made from tests/corpus when it is empty, so a first run starts from every
format and every known break instead of from nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.corpus


def seed_corpus(argv: list[str], wrap: Callable[[bytes], bytes] = lambda data: data) -> None:
    """Write the corpus cases (through ``wrap``) into the first corpus folder if it is empty."""
    from tests.corpus.malformed import cases

    folders = [Path(a) for a in argv[1:] if not a.startswith("-")]
    if not folders:
        return
    folder = folders[0]
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        return
    for case in cases():
        (folder / case.file_name).write_bytes(wrap(case.data))


BOUNDARY = "fuzzb0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(files: list[bytes], field: str = "file") -> bytes:
    """A well-formed multipart body with ``files`` under ``field``."""
    body = b""
    for i, data in enumerate(files):
        body += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="f{i}.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    return body + f"--{BOUNDARY}--\r\n".encode()
