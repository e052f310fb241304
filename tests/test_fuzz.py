"""A bounded run of each fuzz target (fuzz/): no finding, no hang, no memory blow-up.

libFuzzer stops at the first finding and saves the input as crash-*/timeout-*/oom-*; a clean
30-second run of each target exits 0 with none of them. Longer campaigns: see fuzz/.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 30


def _fuzz(target: str, tmp_path: Path, env: dict[str, str]) -> str:
    findings = tmp_path / "findings"
    findings.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", f"fuzz.{target}", f"-max_total_time={SECONDS}", "-timeout=10",
         "-rss_limit_mb=3072", f"-artifact_prefix={findings}/", "-print_final_stats=1",
         str(tmp_path / "corpus")],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=SECONDS + 240,
    )  # fmt: skip
    found = sorted(p.name for p in findings.iterdir())
    assert proc.returncode == 0 and not found, (found, proc.stderr[-3000:])
    runs = re.search(r"Done (\d+) runs", proc.stderr)
    assert runs is not None and int(runs.group(1)) > 100, proc.stderr[-2000:]
    assert len(list((tmp_path / "corpus").iterdir())) >= 150  # seeded from tests/corpus
    return proc.stderr


@pytest.mark.slow
def test_decode_image_fuzz_run_is_clean(tmp_path: Path) -> None:
    _fuzz("decode_image", tmp_path, {})


@pytest.mark.slow
def test_upload_fuzz_run_is_clean(tmp_path: Path, upstream: dict[str, Path]) -> None:
    _fuzz("upload", tmp_path, {"CARINSPECT_FUZZ_MODEL": str(upstream["export"])})


@pytest.mark.slow
def test_multipart_fuzz_run_is_clean(tmp_path: Path) -> None:
    _fuzz("multipart", tmp_path, {})
