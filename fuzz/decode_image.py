r"""Fuzz target: ``decode_image`` on arbitrary bytes.

Any exception other than :class:`ImageError` is a finding (libFuzzer saves the input as
``crash-*``), as is an input that takes longer than ``-timeout`` seconds or more memory than
``-rss_limit_mb``. Each input is decoded twice, at full size and reduced to a 64 px short side
(the JPEG DCT-scaled path), with the limits of a serving pod.

    python -m fuzz.decode_image -max_total_time=600 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix=fuzz/findings/ fuzz/work/decode
"""

from __future__ import annotations

import sys

import atheris

from fuzz.common import seed_corpus

with atheris.instrument_imports(include=["carinspect", "PIL"]):
    from PIL import Image

    from carinspect.data.decoding.images import ImageError, ImageLimits, decode_image

    Image.init()  # the format plugins, imported now so they are instrumented too

LIMITS = ImageLimits(min_side=1, max_pixels=4_000_000, max_bytes=4 * 1024 * 1024)


def test_one_input(data: bytes) -> None:
    """One input: a finding is any exception out of here."""
    for short_side in (None, 64):
        try:
            decoded = decode_image(data, LIMITS, short_side=short_side)
        except ImageError:
            return
        img = decoded.image
        assert img.mode == "RGB", img.mode
        if short_side is not None:
            assert min(img.size) <= max(short_side, 1) or min(img.size) == min(
                decoded.width, decoded.height
            ), (img.size, decoded.width, decoded.height)


def main(argv: list[str]) -> None:
    """Seed the corpus folder if empty, then hand ``argv`` to libFuzzer."""
    seed_corpus(argv)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
