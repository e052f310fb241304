import csv
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carinspect.config import DataConfig, DemoConfig, IngestConfig
from carinspect.data.intake.manifest import read_manifest
from carinspect.data.intake.sources import SourceError
from carinspect.stages import ingest
from carinspect.stages.ingest import IngestError
from tests.conftest import VENV_BIN

CFG = IngestConfig(short_side=48, workers=2)

EXPECTED_DROPS = {
    "broken_zero_bytes.jpg": "empty",
    "broken_truncated.jpg": "truncated",
    "broken_not_an_image.jpg": "not_an_image",
    "broken_pixel_bomb.png": "pixel_bomb",
    "broken_too_small.png": "too_small",
    "broken_unsupported.ppm": "unsupported_format",
    "dirty_0004_copy.jpg": "exact_duplicate",
}


def test_ingest_demo_folder(tmp_path: Path, demo_dir: Path, demo_cfg: DemoConfig) -> None:
    out = tmp_path / "ingest"
    result = ingest.run(DataConfig(source=str(demo_dir)), CFG, out)
    report = json.loads((out / "report.json").read_text())

    dropped = {Path(d["source"]).name: d["reason"] for d in report["dropped_files"]}
    assert dropped == EXPECTED_DROPS
    assert result.dropped == len(EXPECTED_DROPS)
    assert result.images == 2 * demo_cfg.per_class + 1  # + the kept near-duplicate
    assert result.classes == ("clean", "dirty")

    rows = read_manifest(result.manifest)
    assert len(rows) == result.images
    assert len({r.sha256 for r in rows}) == len(rows)
    for r in rows:
        cached = Image.open(out / r.path)
        assert cached.mode == "RGB"
        assert min(cached.size) == min(48, r.width, r.height)
        assert r.path == f"images/{r.sha256[:2]}/{r.sha256}.png"
    cache_files = list((out / "images").rglob("*.png"))
    assert len(cache_files) == len(rows)

    by_name = {Path(r.source).name: r for r in rows}
    assert (
        by_name["clean_0002.jpg"].near_dup_group == by_name["resaved_clean_0002.jpg"].near_dup_group
    )
    assert report["near_duplicate_groups"] >= 1
    rotated = by_name["clean_0019.jpg"]  # stored sideways with EXIF orientation 6
    stored = Image.open(demo_dir / "clean" / "clean_0019.jpg").size
    assert (rotated.width, rotated.height) == (stored[1], stored[0])
    assert {by_name[f"clean_{i:04d}.png"].mode for i in (3, 7, 11, 17)} == {
        "P",
        "RGBA",
        "LA",
        "I;16",
    }

    assert report["shortcut"]["checked"] and not report["shortcut"]["warning"]
    assert report["class_counts"] == {"clean": demo_cfg.per_class + 1, "dirty": demo_cfg.per_class}
    assert "## Dropped files (7)" in (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dropped"] == 7 and metrics["shortcut_warning"] is False


def test_ingest_is_deterministic(tmp_path: Path, demo_dir: Path) -> None:
    a = ingest.run(DataConfig(source=str(demo_dir)), CFG, tmp_path / "a")
    b = ingest.run(DataConfig(source="demo", demo=DemoConfig(per_class=24)), CFG, tmp_path / "b")
    assert a.manifest.read_bytes() != b.manifest.read_bytes()  # sources differ in name...
    strip = lambda p: sorted((r.sha256, r.label) for r in read_manifest(p))  # noqa: E731
    assert strip(a.manifest) == strip(b.manifest)  # ...but not in content
    c = ingest.run(DataConfig(source=str(demo_dir)), CFG, tmp_path / "c")
    assert a.manifest_sha256 == c.manifest_sha256


def _png(size: tuple[int, int], seed: int, gray: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    (img.convert("L") if gray else img).save(buf, format="PNG")
    return buf.getvalue()


def test_shortcut_warning(tmp_path: Path) -> None:
    """Grayscale 64x64 'damaged' vs colour 4:3 'intact' of varied sizes: a trivial shortcut."""
    root = tmp_path / "src"
    for label in ("damaged", "intact"):
        (root / label).mkdir(parents=True)
    for i in range(30):
        (root / "damaged" / f"d{i}.png").write_bytes(_png((64, 64), i, gray=True))
        (root / "intact" / f"i{i}.png").write_bytes(_png((80 + 4 * i, 60 + 3 * i), 100 + i))
    result = ingest.run(DataConfig(source=str(root)), CFG, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert result.shortcut_warning
    assert set(report["shortcut"]["features"]) == {"size", "aspect_ratio", "grayscale"}
    assert "WARNING: shortcut" in (tmp_path / "out" / "report.md").read_text()


def test_conflicting_duplicates_dropped_everywhere(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            # seeds apart from 999 (str hash() is salted per process: it collided now and then)
            (root / label / f"{label}{i}.png").write_bytes(
                _png((40, 40), {"a": 0, "b": 100}[label] + i)
            )
    same = _png((40, 40), 999)
    (root / "a" / "same.png").write_bytes(same)
    (root / "b" / "same.png").write_bytes(same)
    result = ingest.run(DataConfig(source=str(root)), CFG, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["dropped_by_reason"] == {"conflicting_labels": 2}
    assert result.images == 6
    assert len(list((tmp_path / "out" / "images").rglob("*.png"))) == 6


def test_csv_manifest_split_and_group_carried(tmp_path: Path, demo_dir: Path) -> None:
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split", "group"])
        for label in ("clean", "dirty"):
            for i, file in enumerate(sorted((demo_dir / label).glob(f"{label}_*.jpg"))[:6]):
                w.writerow([file, label, "train" if i < 4 else "test", f"car{i // 2}"])
    result = ingest.run(DataConfig(source=str(path)), CFG, tmp_path / "out")
    rows = read_manifest(result.manifest)
    assert [(r.split, r.group) for r in rows[:6]] == [
        ("train", "car0"),
        ("train", "car0"),
        ("train", "car1"),
        ("train", "car1"),
        ("test", "car2"),
        ("test", "car2"),
    ]


def test_csv_manifest_with_a_column_per_task(tmp_path: Path, demo_dir: Path) -> None:
    """One photo, several questions: data.task picks the column; every task is counted."""
    path = tmp_path / "inspections.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "cleanliness", "damage", "split"])
        for label in ("clean", "dirty"):
            for i, file in enumerate(sorted((demo_dir / label).glob(f"{label}_*.jpg"))[:6]):
                damage = "" if i == 5 else ("damaged" if i % 2 else "intact")  # not all labelled
                w.writerow([file, label, damage, ""])
    with pytest.raises(SourceError, match=r"2 task columns \['cleanliness', 'damage'\] and none"):
        ingest.run(DataConfig(source=str(path)), CFG, tmp_path / "none")
    with pytest.raises(SourceError, match=r"data.task 'weather' is not a column"):
        ingest.run(DataConfig(source=str(path), task="weather"), CFG, tmp_path / "none")

    damage = ingest.run(DataConfig(source=str(path), task="damage"), CFG, tmp_path / "damage")
    report = json.loads(damage.report.read_text())
    assert report["task"] == "damage"
    assert report["tasks"] == {  # as listed, before decoding
        "cleanliness": {"clean": 6, "dirty": 6},
        "damage": {"damaged": 4, "intact": 6},
    }
    assert set(report["class_counts"]) == {"damaged", "intact"}  # what was decoded and kept
    assert report["dropped_by_reason"]["no_label"] == 2  # the two photos with no damage label
    assert sum(report["class_counts"].values()) == report["images"] <= 10
    assert "| damage | damaged 4, intact 6 |" in (tmp_path / "damage" / "report.md").read_text()
    clean = ingest.run(DataConfig(source=str(path), task="cleanliness"), CFG, tmp_path / "clean")
    cleanliness = json.loads(clean.report.read_text())
    assert set(cleanliness["class_counts"]) == {"clean", "dirty"}
    assert "no_label" not in cleanliness["dropped_by_reason"]
    assert cleanliness["images"] > report["images"]
    with pytest.raises(SourceError, match=r"data.task 'damage' names a column of a CSV manifest"):
        ingest.run(DataConfig(source=str(demo_dir), task="damage"), CFG, tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_failure_keeps_previous_output(tmp_path: Path, demo_dir: Path) -> None:
    out = tmp_path / "ingest"
    first = ingest.run(DataConfig(source=str(demo_dir)), CFG, out)
    before = first.manifest.read_bytes()
    one_class = tmp_path / "one"
    (one_class / "clean").mkdir(parents=True)
    (one_class / "clean" / "a.png").write_bytes(_png((40, 40), 1))
    with pytest.raises(IngestError, match=r"1 class\(es\) \['clean'\]; at least two classes"):
        ingest.run(DataConfig(source=str(one_class)), CFG, out)
    assert first.manifest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ingest", "one"]  # no temp dirs left


def test_unreadable_file_is_reported_not_fatal(tmp_path: Path, demo_copy: Path) -> None:
    bad = demo_copy / "clean" / "clean_0000.jpg"
    bad.unlink()
    bad.mkdir()  # a directory where a file was listed: rglob skips it
    (demo_copy / "dirty" / "secret.jpg").write_bytes(b"x")
    (demo_copy / "dirty" / "secret.jpg").chmod(0)
    result = ingest.run(DataConfig(source=str(demo_copy)), CFG, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    reasons = {Path(d["source"]).name: d["reason"] for d in report["dropped_files"]}
    assert reasons["secret.jpg"] in {"unreadable", "not_an_image"}  # root can read mode-0 files
    assert result.images > 0


def test_killed_run_leaves_no_output_and_is_cleaned_up(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  source: demo\n  demo:\n    per_class: 400\ningest:\n  workers: 1\n")
    out = tmp_path / "ingest"
    proc = subprocess.Popen(
        [str(VENV_BIN / "carinspect"), "ingest", "--params", str(params), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it is half-way through writing its cache
        staged = list(tmp_path.glob(".ingest.tmp-*"))
        if staged and len(list(staged[0].rglob("*.png"))) > 50:
            break
        assert proc.poll() is None, "ingest finished before it could be interrupted"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert list(tmp_path.glob(".ingest.tmp-*"))
    ingest.run(DataConfig(source="demo", demo=DemoConfig(per_class=8)), CFG, out)
    assert (out / "manifest.csv").is_file()
    assert not list(tmp_path.glob(".ingest.tmp-*"))


def test_serving_decodes_an_upload_to_the_pixels_ingest_cached(tmp_path: Path) -> None:
    """Phone-size JPEGs: ingest's cached image equals what serving decodes from the upload."""
    from carinspect.data.decoding.images import ImageLimits, decode_image

    uploads = {}
    for seed, label in enumerate(("a", "b")):
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:1500, 0:2000]
        arr = np.stack([x % 256, y % 256, (x // 8 + y // 8) % 256], -1)
        arr = arr + rng.integers(0, 30, arr.shape)
        buf = io.BytesIO()
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        (tmp_path / "src" / label).mkdir(parents=True)
        (tmp_path / "src" / label / "photo.jpg").write_bytes(buf.getvalue())
        uploads[label] = buf.getvalue()
    cfg = IngestConfig(short_side=96, min_side=32, min_per_class=1)
    ingest.run(DataConfig(source=str(tmp_path / "src")), cfg, tmp_path / "out")
    rows = read_manifest(tmp_path / "out" / "manifest.csv")
    assert sorted(r.label for r in rows) == ["a", "b"]
    for row in rows:
        assert (row.width, row.height) == (2000, 1500)  # the file's size, not the cached one
        cached = np.asarray(Image.open(tmp_path / "out" / row.path))
        served = decode_image(uploads[row.label], ImageLimits(), short_side=96)
        assert served.reduced == 8 and cached.shape == (96, 128, 3)
        assert np.array_equal(cached, np.asarray(served.image))


def test_a_class_too_small_to_split_is_refused_and_the_previous_ingest_kept(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    for label, count in (("sedan", 4), ("pickup", 4)):
        for i in range(count):
            (src / label).mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(hash((label, i)) % 2**32)
            img = Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
            img.save(src / label / f"{i}.png")
    out = tmp_path / "out"
    ingest.run(DataConfig(source=str(src)), CFG, out)
    before = (out / "manifest.csv").read_bytes()
    for extra in list((src / "pickup").iterdir())[1:]:
        extra.unlink()  # one pickup left: split could not put it in train, val and test
    with pytest.raises(ingest.IngestError) as refused:
        ingest.run(DataConfig(source=str(src)), CFG, out)
    assert "'pickup': 1" in str(refused.value) and "min_per_class=3" in str(refused.value)
    assert (out / "manifest.csv").read_bytes() == before
    assert not any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir())


def test_min_per_class_below_the_splits_is_a_config_error() -> None:
    from carinspect.config import Params

    with pytest.raises(ValueError, match="min_per_class=2 is below the 3 images"):
        Params.model_validate({"ingest": {"min_per_class": 2}})
    Params.model_validate(
        {"ingest": {"min_per_class": 2}, "split": {"train": 0.8, "val": 0.2, "test": 0.0}}
    )


def test_near_duplicates_with_different_labels_are_a_console_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    rng = np.random.default_rng(7)
    for label in ("sedan", "pickup"):
        (src / label).mkdir(parents=True)
        for i in range(3):
            img = Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
            img.save(src / label / f"{label}{i}.png")
    shared = Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    shared.save(src / "sedan" / "same.png")
    shared.resize((80, 64)).save(src / "pickup" / "same.jpg", quality=95)  # re-encoded copy
    with caplog.at_level("WARNING", logger="carinspect.stages.ingest"):
        ingest.run(DataConfig(source=str(src)), CFG, tmp_path / "out")
    warned = [r.getMessage() for r in caplog.records if "near-duplicate" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert "1 near-duplicate group(s) carry different labels" in warned[0]
    assert "pickup vs sedan" in warned[0] and "report.md" in warned[0]
