"""The malformed-image corpus (tests/corpus): decode_image and ingest refuse each case the same way.

The served side (/predict on a real server) is tests/serving/test_corpus_uploads.py.
"""

import json
from pathlib import Path

import pytest

from carinspect.config import DataConfig, IngestConfig
from carinspect.data.decoding.images import ImageError, ImageLimits, decode_image
from carinspect.data.intake.manifest import read_manifest
from carinspect.stages import ingest
from tests.corpus.malformed import Case, cases

CASES = cases()
LIMITS = ImageLimits(min_side=IngestConfig().min_side)


def _reason(case: Case, short_side: int | None) -> str:
    try:
        decode_image(case.data, LIMITS, short_side=short_side)
    except ImageError as err:
        assert err.detail, case.name
        return err.reason
    return "ok"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_case_gets_its_reason(case: Case) -> None:
    assert _reason(case, None) == case.reason
    assert _reason(case, 32) == case.reason  # JPEGs decoded at a reduced scale: same verdict


def test_corpus_covers_every_format_and_kind_of_break() -> None:
    by_ext: dict[str, set[str]] = {}
    for case in CASES:
        by_ext.setdefault(case.ext, set()).add(case.reason)
    for ext in ("png", "jpg", "gif", "webp", "tif", "bmp"):
        assert {"ok", "truncated"} <= by_ext[ext], ext
    assert {"corrupt", "pixel_bomb"} <= by_ext["png"] & by_ext["jpg"]
    assert len(CASES) >= 150


def test_the_half_png_of_the_issue_is_refused() -> None:
    """8x8 declared, 4 rows in IDAT, IEND CRC valid or zeroed: Pillow pads it; we do not."""
    from tests.corpus.malformed import png_rows

    half = png_rows(8, 8, 4)
    for data, reason in ((half, "truncated"), (half[:-4] + b"\0" * 4, "corrupt")):
        with pytest.raises(ImageError, match=reason) as err:
            decode_image(data)
        assert err.value.reason == reason
    with pytest.raises(ImageError, match="IDAT holds 4 of the 8 rows"):
        decode_image(half)


def test_ingest_refuses_each_case_with_the_same_reason(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for i, case in enumerate(CASES):
        folder = source / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / case.file_name).write_bytes(case.data)
    out = tmp_path / "ingest"
    result = ingest.run(DataConfig(source=str(source)), IngestConfig(short_side=32, workers=2), out)
    report = json.loads((out / "report.json").read_text())
    dropped = {Path(d["source"]).name: d["reason"] for d in report["dropped_files"]}
    expected = {c.file_name: c.reason for c in CASES if c.reason != "ok"}
    assert dropped == expected
    kept = {Path(r.source).name for r in read_manifest(result.manifest)}
    assert kept == {c.file_name for c in CASES if c.reason == "ok"}
