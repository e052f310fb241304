"""Several tasks per photo through ingest and split: CSV and COCO sources, missing cells."""

import csv
import json
from pathlib import Path

import pytest

from carinspect.config import DataConfig, IngestConfig, SplitConfig
from carinspect.data.intake.demo import TASKS_CSV
from carinspect.data.intake.manifest import label_of, read_manifest, read_splits, row_tasks
from carinspect.data.intake.sources import SourceError, open_source
from carinspect.stages import ingest, split

CFG = IngestConfig(short_side=48, workers=2)
TASKS = ["cleanliness", "damage"]


def test_demo_tasks_csv_through_ingest_and_split(tmp_path: Path, demo_dir: Path) -> None:
    listed = list(csv.DictReader((demo_dir / TASKS_CSV).open()))
    assert {r["damage"] for r in listed} == {"damaged", "intact", ""}  # gaps, as real labels have
    source = str(demo_dir / TASKS_CSV)
    result = ingest.run(DataConfig(source=source, task=TASKS), CFG, tmp_path / "ingest")
    rows = read_manifest(result.manifest)
    assert row_tasks(rows) == TASKS
    assert all(r.label == r.labels["cleanliness"] for r in rows)  # `label` = the first task
    unlabelled = [r for r in rows if not label_of(r, "damage")]
    assert unlabelled and all(label_of(r, "cleanliness") for r in unlabelled)  # kept, not dropped
    header = result.manifest.read_text().splitlines()[0].split(",")
    assert header[-2:] == ["label:cleanliness", "label:damage"]
    report = json.loads(result.report.read_text())
    trained = report["trained_tasks"]
    assert list(trained) == TASKS and set(trained["damage"]) == {"damaged", "intact"}
    assert sum(trained["cleanliness"].values()) == report["images"]
    assert sum(trained["damage"].values()) == report["images"] - len(unlabelled)
    assert "broken_truncated.jpg" in {Path(d["source"]).name for d in report["dropped_files"]}
    assert "## Tasks trained together" in (tmp_path / "ingest" / "report.md").read_text()

    done = split.run(SplitConfig(), result.manifest, tmp_path / "split")
    split_report = json.loads(done.report.read_text())
    assert split_report["stratified_on"] == "damage"  # damaged is the rarest class of any task
    for s in ("train", "val", "test"):  # the rarest class reaches every split
        assert split_report["tasks"]["damage"][s]["damaged"] > 0
    back = read_splits(done.splits)
    assert row_tasks(back) == TASKS
    assert {r.sha256: dict(r.labels) for r in back} == {r.sha256: dict(r.labels) for r in rows}
    text = (tmp_path / "split" / "report.md").read_text()
    assert "Stratified on `damage`" in text and "| damage | (unlabelled) |" in text


def test_a_row_with_no_label_for_any_task_is_dropped(tmp_path: Path, demo_dir: Path) -> None:
    path = tmp_path / "labels.csv"
    files = (
        sorted((demo_dir / "clean").glob("clean_*.jpg"))[:3]
        + sorted((demo_dir / "dirty").glob("dirty_*.jpg"))[:3]
    )
    rows = [[f, f.parent.name, "damaged" if i % 2 else "intact"] for i, f in enumerate(files)]
    rows[0][1:] = ["", ""]
    rows[1][1] = ""  # damage only
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", *TASKS], *rows])
    with open_source(str(path), task=TASKS) as resolved:
        assert resolved.tasks == TASKS and resolved.task == "cleanliness"
        assert [r.reason for r in resolved.rejected] == ["no_label"]
        assert "has no cleanliness or damage" in resolved.rejected[0].detail
        assert resolved.items[0].labels == {"cleanliness": "", "damage": rows[1][2]}
    with (
        pytest.raises(SourceError, match=r"data.task 'weather' is not a column"),
        open_source(str(path), task=["damage", "weather"]),
    ):
        pass


def _coco(tmp_path: Path, demo_dir: Path) -> Path:
    files = sorted((demo_dir / "clean").glob("clean_*.jpg"))[:4]
    cats = ["clean", "dirty", "damaged", "intact", "sunny"]
    anns = [  # image -> its categories
        ["clean", "intact", "sunny"],
        ["dirty", "damaged"],
        ["damaged"],  # cleanliness not labelled
        ["clean", "dirty"],  # two cleanliness categories: refused
    ]
    doc = {
        "images": [{"id": i, "file_name": str(f)} for i, f in enumerate(files)],
        "categories": [{"id": j, "name": c} for j, c in enumerate(cats)],
        "annotations": [
            {"id": 100 * i + j, "image_id": i, "category_id": cats.index(c)}
            for i, names in enumerate(anns)
            for j, c in enumerate(names)
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_categories_mapped_to_tasks(tmp_path: Path, demo_dir: Path) -> None:
    path = _coco(tmp_path, demo_dir)
    mapping = {"cleanliness": ["clean", "dirty"], "damage": ["damaged", "intact"]}
    with open_source(str(path), coco_tasks=mapping) as resolved:
        assert resolved.tasks == TASKS
        assert [i.labels for i in resolved.items] == [
            {"cleanliness": "clean", "damage": "intact"},
            {"cleanliness": "dirty", "damage": "damaged"},
            {"cleanliness": "", "damage": "damaged"},
        ]
        assert [(r.reason, r.detail) for r in resolved.rejected] == [
            ("multiple_categories", "annotated as ['clean', 'dirty'] for task 'cleanliness'")
        ]
    with open_source(str(path), task="damage", coco_tasks=mapping) as resolved:
        assert [i.label for i in resolved.items] == ["intact", "damaged", "damaged"]
        assert all(i.labels is None for i in resolved.items)  # one task: today's shape
        assert [r.reason for r in resolved.rejected] == ["no_annotation"]
    with (
        pytest.raises(SourceError, match=r"coco_tasks.damage: categories \['scratched'\]"),
        open_source(str(path), coco_tasks={**mapping, "damage": ["scratched", "intact"]}),
    ):
        pass
    with pytest.raises(ValueError, match="category 'clean' is in both"):
        DataConfig(source=str(path), coco_tasks={"a": ["clean", "dirty"], "b": ["clean", "x"]})
    with (
        pytest.raises(SourceError, match=r"data\.coco_tasks maps COCO categories"),
        open_source(str(demo_dir), coco_tasks=mapping),
    ):
        pass


def test_kfp_inputs_carry_several_tasks() -> None:
    from components import glue

    assert glue.task_input("") is None
    assert glue.task_input("damage") == "damage"
    assert glue.task_input("cleanliness, damage") == TASKS
    assert glue.task_text(TASKS) == "cleanliness,damage" and glue.task_text(None) == ""
    mapping = {"cleanliness": ["clean", "dirty"], "damage": ["damaged", "intact"]}
    p = glue.params_from_inputs(
        {"coco_tasks_cfg": json.dumps(mapping)},
        {"data.source": "x/coco.json", "data.task": glue.task_input("damage")},
    )
    assert p.data.coco_tasks == mapping and p.data.task == "damage"
