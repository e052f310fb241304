r"""Fuzz target: the in-memory multipart parser on arbitrary bodies.

The parser (``carinspect.serving.multipart``) reads untrusted bytes before anything else does.
It may refuse a body only with ``MultipartError``; what it accepts must be consistent: every
part's bytes are a piece of the body that holds no delimiter, and at most MAX_PARTS of them.
Seeds are the image corpus wrapped as one-file forms.

    python -m fuzz.multipart -max_total_time=600 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix=fuzz/findings/ fuzz/work/multipart
"""

from __future__ import annotations

import sys

import atheris

from fuzz.common import BOUNDARY, CONTENT_TYPE, multipart, seed_corpus

with atheris.instrument_imports(include=["carinspect", "python_multipart"]):
    from carinspect.serving import multipart as parser

SEPARATOR = f"\r\n--{BOUNDARY}".encode()


def test_one_input(body: bytes) -> None:
    """One body: a finding is any exception but MultipartError, or an inconsistent part."""
    try:
        parts = parser.parse(body, CONTENT_TYPE)
    except parser.MultipartError:
        return
    assert len(parts) <= parser.MAX_PARTS
    for part in parts:
        assert part.name is not None and part.data in body
        assert SEPARATOR not in part.data, part


def main(argv: list[str]) -> None:
    """Seed the corpus folder if empty, then hand ``argv`` to libFuzzer."""
    seed_corpus(argv, lambda data: multipart([data]))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
