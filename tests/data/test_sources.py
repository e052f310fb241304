import json
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest

from carinspect.config import DemoConfig
from carinspect.data.intake.sources import SourceError, open_source, parse_dvc_uri, source_kind
from tests.conftest import VENV_BIN


def labels_of(source: str) -> dict[str, str]:
    with open_source(source) as resolved:
        return {item.source.rsplit("/", 1)[-1]: item.label for item in resolved.items}


def small_folder(root: Path) -> Path:
    for label in ("clean", "dirty"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"{label}{i}.jpg").write_bytes(f"{label}{i}".encode())
    (root / "clean" / ".DS_Store").write_bytes(b"x")
    (root / "README.md").write_text("not in a class folder")
    return root


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("demo", "demo"),
        ("s3://b/p", "s3"),
        ("dvc://repo@v1#data", "dvc"),
        ("x/labels.csv", "csv"),
        ("x/coco.json", "coco"),
        ("data/raw", "folder"),
    ],
)
def test_source_kind(source: str, kind: str) -> None:
    assert source_kind(source) == kind


def test_parse_dvc_uri() -> None:
    assert parse_dvc_uri("dvc:///tmp/repo@v1.0#data/images") == ("/tmp/repo", "v1.0", "data/images")
    assert parse_dvc_uri("dvc://https://github.com/o/r@main#d/") == (
        "https://github.com/o/r",
        "main",
        "d",
    )
    assert parse_dvc_uri("dvc://git@github.com:o/r#d") == ("git@github.com:o/r", None, "d")
    with pytest.raises(SourceError, match="expected dvc://"):
        parse_dvc_uri("dvc:///tmp/repo@v1")


def test_folder_source(tmp_path: Path) -> None:
    root = small_folder(tmp_path / "src")
    found = labels_of(str(root))
    assert found == {f"{c}{i}.jpg": c for c in ("clean", "dirty") for i in range(3)}


def test_folder_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        labels_of(str(tmp_path / "nope"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"x")
    with pytest.raises(SourceError, match="no class subfolders"):
        labels_of(str(tmp_path / "flat"))


def test_csv_source(tmp_path: Path) -> None:
    small_folder(tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "path,label,split,group\n"
        "clean/clean0.jpg,clean,train,car1\n"
        "dirty/dirty0.jpg,dirty,test,car1\n"
        "dirty/missing.jpg,dirty,val,\n"
        "clean/clean1.jpg,,val,\n"
    )
    with open_source(str(csv_path)) as resolved:
        assert [(i.source, i.label, i.split, i.group) for i in resolved.items] == [
            ("clean/clean0.jpg", "clean", "train", "car1"),
            ("dirty/dirty0.jpg", "dirty", "test", "car1"),
        ]
        assert resolved.items[0].read() == b"clean0"
        assert sorted(r.reason for r in resolved.rejected) == ["missing_file", "no_label"]


def test_csv_source_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.jpg,x\n")
    with pytest.raises(
        SourceError, match=r"has the columns \['file', 'class'\]; expected a header"
    ):
        labels_of(str(bad))
    bad.write_text("path,split\na.jpg,train\n")
    with pytest.raises(SourceError, match=r"path,<task>\[,<task>...\]"):
        labels_of(str(bad))
    bad.write_text("path,label,split\na.jpg,x,holdout\n")
    with pytest.raises(SourceError, match="line 2: split 'holdout'"):
        labels_of(str(bad))


def test_coco_source(tmp_path: Path) -> None:
    small_folder(tmp_path)
    doc = {
        "images": [
            {"id": 1, "file_name": "clean/clean0.jpg"},
            {"id": 2, "file_name": "dirty/dirty0.jpg"},
            {"id": 3, "file_name": "dirty/dirty1.jpg"},
            {"id": 4, "file_name": "clean/clean1.jpg"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [1, 1, 1, 1]},
            {"id": 12, "image_id": 2, "category_id": 2},
            {"id": 13, "image_id": 3, "category_id": 1},
            {"id": 14, "image_id": 3, "category_id": 2},
        ],
        "categories": [{"id": 1, "name": "clean"}, {"id": 2, "name": "dirty"}],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(doc))
    with open_source(str(path)) as resolved:
        assert [(i.source, i.label) for i in resolved.items] == [
            ("clean/clean0.jpg", "clean"),
            ("dirty/dirty0.jpg", "dirty"),
        ]
        assert {r.source: r.reason for r in resolved.rejected} == {
            "dirty/dirty1.jpg": "multiple_categories",
            "clean/clean1.jpg": "no_annotation",
        }
    doc["annotations"].append({"id": 15, "image_id": 4, "category_id": 9})
    path.write_text(json.dumps(doc))
    with pytest.raises(SourceError, match=r"annotations\[5\]: category_id 9"):
        labels_of(str(path))
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(SourceError, match="missing key 'annotations'"):
        labels_of(str(path))


def test_demo_source_is_deterministic() -> None:
    cfg = DemoConfig(per_class=5, seed=3)
    with open_source("demo", cfg) as a, open_source("demo", cfg) as b:
        assert [i.read() for i in a.items] == [i.read() for i in b.items]
        assert {i.label for i in a.items} == {"clean", "dirty"}
    with open_source("demo", DemoConfig(per_class=5, seed=4)) as c:
        assert a.items[0].read() != c.items[0].read()


def test_demo_severity_scale_is_multiclass() -> None:
    """A third class gives a multiclass demo; the broken files land in its first classes."""
    cfg = DemoConfig(per_class=5, seed=3, classes=["clean", "dusty", "muddy"])
    with open_source("demo", cfg) as src:
        labels = [i.label for i in src.items]
    assert {lb: labels.count(lb) for lb in set(labels)} == {"clean": 9, "dusty": 9, "muddy": 5}
    with open_source("demo", cfg.model_copy(update={"broken": False})) as src:
        by_label = {i.label: i.read() for i in src.items if i.source.endswith("_0000.jpg")}
    assert len(set(by_label.values())) == 3  # dirt levels differ, not just the names


def test_s3_source(s3_endpoint: str, tmp_path: Path) -> None:
    root = small_folder(tmp_path / "src")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="cars-src")
    for path in root.rglob("*"):
        if path.is_file():
            s3.put_object(
                Bucket="cars-src", Key=f"fleet/v1/{path.relative_to(root)}", Body=path.read_bytes()
            )
    s3.put_object(Bucket="cars-src", Key="fleet/v1/dirty/", Body=b"")  # a folder marker
    with open_source("s3://cars-src/fleet/v1") as resolved:
        assert len(resolved.items) == 6
        item = resolved.items[0]
        assert item.source == "s3://cars-src/fleet/v1/clean/clean0.jpg"
        assert item.label == "clean" and item.read() == b"clean0"
    with pytest.raises(
        SourceError,
        match=r"data\.source s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist",
    ):
        labels_of("s3://no-such-bucket/x")
    with pytest.raises(SourceError, match="no objects"):
        labels_of("s3://cars-src/empty")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def dvc(cwd: Path, *args: str) -> None:
    subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=cwd, check=True, capture_output=True)


def test_dvc_source(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    small_folder(repo / "data" / "images")
    (repo / "data" / "images" / "README.md").unlink()
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    dvc(repo, "add", "data/images")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v1")
    git(repo, "tag", "v1")
    dvc(repo, "push")
    (repo / "data" / "images" / "dirty" / "dirty3.jpg").write_bytes(b"dirty3")
    dvc(repo, "add", "data/images")
    git(repo, "commit", "-qam", "v2")
    dvc(repo, "push")
    shutil.rmtree(repo / ".dvc" / "cache")  # the bytes must come from the remote

    v1 = labels_of(f"dvc://{repo}@v1#data/images")
    assert len(v1) == 6 and v1["dirty0.jpg"] == "dirty"
    head = labels_of(f"dvc://{repo}#data/images")
    assert head["dirty3.jpg"] == "dirty" and len(head) == 7
    with pytest.raises(SourceError, match="not a folder"):
        labels_of(f"dvc://{repo}@v1#data/nothing")
