import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from carinspect.config import SplitConfig
from carinspect.data.intake.manifest import ManifestRow, manifest_csv, read_splits
from carinspect.stages import split
from carinspect.stages.split import SplitError


def row(i: int, label: str, near: str = "", group: str = "", split_name: str = "") -> ManifestRow:
    sha = hashlib.sha256(str(i).encode()).hexdigest()
    return ManifestRow(
        sha256=sha,
        path=f"images/{sha[:2]}/{sha}.png",
        source=f"src/{label}/{i}.jpg",
        label=label,
        width=100,
        height=80,
        format="JPEG",
        mode="RGB",
        grayscale=0,
        near_dup_group=near or sha[:16],
        split=split_name,
        group=group,
    )


def write(tmp_path: Path, rows: list[ManifestRow]) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text(manifest_csv(rows))
    return path


def imbalanced(n_a: int = 300, n_b: int = 60) -> list[ManifestRow]:
    rows = [row(i, "a") for i in range(n_a)] + [row(n_a + i, "b") for i in range(n_b)]
    # some near-duplicate clusters and same-car groups
    rows = [
        row(
            r_i,
            r.label,
            near="nd7" if r_i in (3, 4, 5) else "",
            group=f"car{r_i // 4}" if r_i >= 200 else "",
        )
        for r_i, r in enumerate(rows)
    ]
    return rows


def test_stratified_within_tolerance(tmp_path: Path) -> None:
    rows = imbalanced()
    result = split.run(SplitConfig(), write(tmp_path, rows), tmp_path / "out")
    for name, fraction in SplitConfig().fractions().items():
        for label, total in Counter(r.label for r in rows).items():
            got = result.counts[name].get(label, 0)
            assert abs(got - total * fraction) <= max(4, 0.05 * total), (name, label, got)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["splits"]["train"]["class_counts"] == result.counts["train"]
    assert "| b |" in (tmp_path / "out" / "report.md").read_text()


def test_groups_and_near_duplicates_never_cross(tmp_path: Path) -> None:
    rows = imbalanced()
    result = split.run(SplitConfig(seed=7), write(tmp_path, rows), tmp_path / "out")
    assigned = {r.sha256: r.split for r in read_splits(result.splits)}
    by_unit: dict[str, set[str]] = {}
    for r in rows:
        for key in (("near", r.near_dup_group), ("group", r.group)):
            if key[1]:
                by_unit.setdefault(f"{key[0]}:{key[1]}", set()).add(assigned[r.sha256])
    assert all(len(s) == 1 for s in by_unit.values())
    assert len({assigned[r.sha256] for r in rows[3:6]}) == 1


def test_same_seed_same_result(tmp_path: Path) -> None:
    manifest = write(tmp_path, imbalanced())
    a = split.run(SplitConfig(seed=1), manifest, tmp_path / "a").splits.read_bytes()
    b = split.run(SplitConfig(seed=1), manifest, tmp_path / "b").splits.read_bytes()
    c = split.run(SplitConfig(seed=2), manifest, tmp_path / "c").splits.read_bytes()
    assert a == b
    assert a != c


def test_small_class_fails_clearly(tmp_path: Path) -> None:
    rows = [row(i, "a") for i in range(50)] + [row(50, "rare"), row(51, "rare")]
    with pytest.raises(
        SplitError, match=r"class 'rare' has 2 image\(s\) in 2 unit\(s\).*need at least 3"
    ):
        split.run(SplitConfig(), write(tmp_path, rows), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # three images but all near-duplicates of each other: one unit
    rows = [row(i, "a") for i in range(50)] + [row(50 + i, "rare", near="same") for i in range(3)]
    with pytest.raises(SplitError, match=r"in 1 unit\(s\)"):
        split.run(SplitConfig(), write(tmp_path, rows), tmp_path / "out")


def test_tiny_classes_still_reach_every_split(tmp_path: Path) -> None:
    rows = [row(i, "a") for i in range(100)] + [row(100 + i, "b") for i in range(3)]
    result = split.run(SplitConfig(), write(tmp_path, rows), tmp_path / "out")
    assert [result.counts[s]["b"] for s in ("train", "val", "test")] == [1, 1, 1]


def test_zero_fraction_split(tmp_path: Path) -> None:
    rows = [row(i, "ab"[i % 2]) for i in range(40)]
    result = split.run(
        SplitConfig(train=0.8, val=0.2, test=0.0), write(tmp_path, rows), tmp_path / "out"
    )
    assert result.counts["test"] == {}
    assert sum(result.counts["val"].values()) == 8


def test_manifest_split_column_honoured(tmp_path: Path) -> None:
    rows = [row(i, "ab"[i % 2], split_name=["train", "val", "test"][i % 3]) for i in range(30)]
    result = split.run(SplitConfig(), write(tmp_path, rows), tmp_path / "out")
    assigned = {r.sha256: r.split for r in read_splits(result.splits)}
    assert all(assigned[r.sha256] == r.split for r in rows)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"] == "manifest split column"


def test_manifest_split_leakage_is_warned(tmp_path: Path) -> None:
    rows = [row(i, "ab"[i % 2], split_name=["train", "val", "test"][i % 3]) for i in range(30)]
    rows[0] = row(0, "a", near="twin", split_name="train")
    rows[1] = row(1, "b", near="twin", split_name="test")
    split.run(SplitConfig(), write(tmp_path, rows), tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("leakage" in w for w in report["warnings"])


def test_partial_split_column_fails(tmp_path: Path) -> None:
    rows = [row(i, "ab"[i % 2], split_name="train" if i else "") for i in range(10)]
    with pytest.raises(SplitError, match=r"1 row\(s\) have no split"):
        split.run(SplitConfig(), write(tmp_path, rows), tmp_path / "out")
    result = split.run(
        SplitConfig(respect_manifest_split=False), write(tmp_path, rows), tmp_path / "out"
    )
    assert sum(result.counts["test"].values()) > 0
