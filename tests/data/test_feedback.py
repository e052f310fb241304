"""`carinspect feedback import`: a log kept by the real sampler, labels checked, a revision out."""

import csv
import io
from pathlib import Path

import pytest
from PIL import Image

from carinspect.config import DataConfig, DemoConfig, IngestConfig
from carinspect.contracts.folders import IngestDir
from carinspect.data.decoding.fingerprint import sha256_bytes
from carinspect.data.decoding.images import ImageLimits
from carinspect.data.intake.demo import demo_files
from carinspect.data.intake.feedback import FeedbackError, import_feedback, read_log
from carinspect.data.intake.manifest import read_manifest
from carinspect.data.intake.sources import SourceError
from carinspect.serving.feedback import FeedbackLog
from carinspect.serving.inference import answer, pixels_for
from carinspect.serving.loaded import ModelRef
from carinspect.serving.metrics import ServingMetrics
from carinspect.serving.observers import AnsweredPhoto
from carinspect.serving.opening import open_model
from carinspect.serving.settings import ServeSettings
from carinspect.stages import ingest
from tests.e2e.project import sh


def keep_served(log: Path, export: Path, photos: list[bytes]) -> None:
    """Answer ``photos`` with the exported model and keep them all, as `carinspect serve` does."""
    settings = ServeSettings(FEEDBACK_DIR=str(log), FEEDBACK_PERCENT=100)
    model = open_model(ModelRef.parse(str(export)), None, export, settings)
    kept = FeedbackLog(settings, ServingMetrics())
    kept.start()
    for i, data in enumerate(photos):
        scores = model.infer(pixels_for(data, model, ImageLimits())[None])[0]
        reply = answer(model, scores)
        kept.observe(AnsweredPhoto(data, f"car-{i}.png", model, scores, None, reply))
    kept.stop()


@pytest.fixture
def log(tmp_path: Path, upstream: dict[str, Path]) -> tuple[Path, list[tuple[str, str]]]:
    """A feedback log of 8 demo photos; (sha256, true class) of each."""
    files = demo_files(DemoConfig(per_class=4, seed=7, broken=False))
    keep_served(tmp_path / "log", upstream["export"], [f.make() for f in files])
    return tmp_path / "log", [(sha256_bytes(f.make()), f.label) for f in files]


def _csv(path: Path, rows: list[tuple[str, str]], header: str = "sha256,label") -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header.split(","))
    writer.writerows(rows)
    path.write_text(buf.getvalue())
    return path


def test_a_reviewer_csv_becomes_class_folders_and_a_relabel_moves_a_photo(
    log: tuple[Path, list[tuple[str, str]]], tmp_path: Path
) -> None:
    root, truth = log
    assert set(read_log(str(root))) == {sha for sha, _ in truth}
    result = import_feedback(_csv(tmp_path / "labels.csv", truth), str(root), tmp_path / "fb")
    assert (result.added, result.relabelled, result.unchanged) == (8, 0, 0)
    assert result.classes == {"clean": 4, "dirty": 4} and result.dvc_file is None
    for sha, label in truth:
        assert len(list((tmp_path / "fb" / "photos" / label).glob(f"{sha}.*"))) == 1

    sha, label = truth[0]
    other = "dirty" if label == "clean" else "clean"
    again = import_feedback(
        _csv(tmp_path / "fix.csv", [(sha, other)], "hash,label"), str(root), tmp_path / "fb"
    )
    assert (again.added, again.relabelled, again.unchanged) == (0, 1, 0)
    assert list((tmp_path / "fb" / "photos" / other).glob(f"{sha}.*"))
    assert not list((tmp_path / "fb" / "photos" / label).glob(f"{sha}.*"))
    assert sum(again.classes.values()) == 8  # the other photos stay as they were


def test_unknown_hashes_and_classes_are_refused_naming_the_rows(
    log: tuple[Path, list[tuple[str, str]]], tmp_path: Path
) -> None:
    root, truth = log
    import_feedback(_csv(tmp_path / "first.csv", truth[:2]), str(root), tmp_path / "fb")
    before = sorted(p.name for p in (tmp_path / "fb" / "photos").rglob("*"))
    rows = [
        truth[2],
        ("0" * 64, "clean"),
        (truth[3][0], "muddy"),
        (truth[2][0], "dirty" if truth[2][1] == "clean" else "clean"),
    ]
    with pytest.raises(FeedbackError) as err:
        import_feedback(_csv(tmp_path / "bad.csv", rows), str(root), tmp_path / "fb")
    text = str(err.value)
    assert "3 row(s) refused, nothing imported" in text
    assert "row 3: hash 000000000000 is not in the feedback log" in text
    assert "row 4: label 'muddy' is not one of ['clean', 'dirty']" in text
    assert "row 5: photo" in text and "row 2" in text  # two labels for one photo
    assert sorted(p.name for p in (tmp_path / "fb" / "photos").rglob("*")) == before

    with pytest.raises(FeedbackError, match="expected the columns sha256"):
        import_feedback(
            _csv(tmp_path / "cols.csv", truth, "photo,class"), str(root), tmp_path / "fb"
        )


def test_a_folder_sorted_by_hand_imports_and_ingest_groups_it_with_the_source(
    log: tuple[Path, list[tuple[str, str]]], tmp_path: Path
) -> None:
    root, truth = log
    sorted_dir = tmp_path / "sorted"
    kept = read_log(str(root))
    for sha, label in truth:
        (sorted_dir / label).mkdir(parents=True, exist_ok=True)
        (sorted_dir / label / f"renamed-{sha[:6]}.png").write_bytes(kept[sha].read())
    stray = tmp_path / "stray"
    (stray / "clean").mkdir(parents=True)
    Image.new("RGB", (64, 48), "red").save(stray / "clean" / "not-served.png")
    with pytest.raises(
        FeedbackError, match=r"clean/not-served.png: hash \w+ is not in the feedback log"
    ):
        import_feedback(stray, str(root), tmp_path / "fb")
    import_feedback(sorted_dir, str(root), tmp_path / "fb")

    # the source holds a recompressed copy of one feedback photo: one car, so one group
    source = tmp_path / "source"
    for f in demo_files(DemoConfig(per_class=6, seed=1, broken=False)):
        (source / f.label).mkdir(parents=True, exist_ok=True)
        (source / f.label / f.name).write_bytes(f.make())
    twin_sha, twin_label = truth[0]
    Image.open(io.BytesIO(kept[twin_sha].read())).convert("RGB").save(
        source / twin_label / "twin.jpg", quality=90
    )
    ingest.run(
        DataConfig(source=str(source), feedback=str(tmp_path / "fb")),
        IngestConfig(short_side=40),
        tmp_path / "ingest",
    )
    rows = read_manifest(IngestDir(tmp_path / "ingest").manifest)
    from_feedback = [r for r in rows if "/photos/" in r.source]
    assert len(from_feedback) == 8 and len(rows) == 12 + 1 + 8
    twin = next(r for r in rows if r.source.endswith("twin.jpg"))
    original = next(r for r in rows if r.sha256 == twin_sha)
    assert twin.near_dup_group and twin.near_dup_group == original.near_dup_group


def test_inside_a_dvc_project_the_photos_are_dvc_added(
    log: tuple[Path, list[tuple[str, str]]], tmp_path: Path
) -> None:
    root, truth = log
    project = tmp_path / "project"
    project.mkdir()
    sh(project, "git", "init", "-q")
    sh(project, "dvc", "init", "-q")
    result = import_feedback(
        _csv(tmp_path / "labels.csv", truth), str(root), project / "data" / "feedback"
    )
    assert result.dvc_file == project / "data" / "feedback" / "photos.dvc"
    assert "md5:" in result.dvc_file.read_text() and "nfiles: 8" in result.dvc_file.read_text()
    assert "/photos" in (project / "data" / "feedback" / ".gitignore").read_text()


def test_classes_only_the_feedback_has_are_refused_naming_them(tmp_path: Path) -> None:
    source, feedback = tmp_path / "source", tmp_path / "fb" / "photos"
    for label in ("sedan", "pickup"):
        for i in range(4):
            (source / label).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), (40 * i, 90, len(label) * 20)).save(
                source / label / f"{i}.png"
            )
    for label in ("clean", "pickup"):  # another project's reviewer labels, and one of ours
        for i in range(3):
            (feedback / label).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), (90, 30 * i, len(label) * 9)).save(
                feedback / label / f"{i}.png"
            )
    data = DataConfig(source=str(source), feedback=str(tmp_path / "fb"))
    with pytest.raises(SourceError, match=r"class\(es\) \[.clean.\]"):
        ingest.run(data, IngestConfig(short_side=40), tmp_path / "ingest")
    assert not (tmp_path / "ingest").exists()
    taken = ingest.run(
        data.model_copy(update={"feedback_new_classes": True}),
        IngestConfig(short_side=40),
        tmp_path / "ingest",
    )
    assert sorted(taken.classes) == ["clean", "pickup", "sedan"]
