"""``carinspect predict``: a file, a folder or an S3 prefix through the served model, no HTTP.

It loads the model exactly as the server does (MODEL_URI, the model store) and answers with the
same fields; files that cannot be used get a row with the reason instead of stopping the run.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from carinspect.data.decoding.images import ImageError, ImageLimits
from carinspect.errors import InputError
from carinspect.evaluation.heatmap import png
from carinspect.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from carinspect.serving.inference import answer, prepare, shown_class
from carinspect.serving.loaded import LoadedModel
from carinspect.serving.observers import AnsweredPhoto, DriftObserver

Reader = Callable[[], bytes]
DRAWN = 512  # --explain: the longest side of a photo drawn with its heatmap


def list_inputs(target: str) -> list[tuple[str, Reader]]:
    """(name, reader) for a file, every file under a folder, or every object under s3://."""
    if target.startswith("s3://"):
        return _s3_inputs(target)
    path = Path(target)
    if path.is_file():
        return [(str(path), path.read_bytes)]
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise InputError(f"{target}: no files in this folder")
        return [(str(p), p.read_bytes) for p in files]
    raise InputError(f"{target}: no such file or folder")


def _s3_inputs(uri: str) -> list[tuple[str, Reader]]:
    from carinspect.data.intake.sources import s3_objects
    from carinspect.data.storage.objects import parse_s3_uri

    objects = s3_objects(uri, "predict")  # a malformed URI: the error names "predict"
    bucket = parse_s3_uri(uri)[0]
    found = [(f"s3://{bucket}/{key}", read) for key, read in objects]
    if not found:
        raise InputError(f"{uri}: no objects under this prefix")
    return found


def _chunks(items: list[tuple[str, Reader]], size: int) -> Iterator[list[tuple[str, Reader]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict_inputs(
    model: LoadedModel,
    items: list[tuple[str, Reader]],
    limits: ImageLimits,
    batch_size: int,
    explain: Path | None = None,
) -> list[dict[str, Any]]:
    """One row per input, in order: an answer, or ``error`` and ``detail``.

    When the model keeps a drift window, every answered photo goes into it, as in serving.
    ``explain``: a folder that gets each answered photo with the heatmap of its label laid on
    it (one PNG per task), named in the row's ``explanation``.
    """
    if explain is not None and model.unexplained is not None:
        raise InputError(f"--explain: {model.unexplained}")
    rows: list[dict[str, Any]] = []
    drift = DriftObserver()  # the photos into the model's window, as in serving
    for chunk in _chunks(items, batch_size):
        good: list[tuple[int, np.ndarray, dict[str, float] | None]] = []
        kept: dict[int, bytes] = {}  # explaining: the chunk's uploads, to draw the maps on
        start = len(rows)
        for name, read in chunk:
            try:
                data = read()
                good.append((len(rows), *prepare(data, model, limits)))
                if explain is not None:
                    kept[len(rows)] = data
                rows.append({"path": name})
            except ImageError as err:
                rows.append({"path": name, "error": err.reason, "detail": err.detail})
            except OSError as err:
                rows.append({"path": name, "error": "unreadable", "detail": str(err)})
        if good:
            scores = model.infer(np.stack([p for _, p, _ in good]), explain is not None)
            for (index, _, stats), photo in zip(good, scores, strict=True):
                got = answer(model, photo)
                row = rows[index]
                row.update(got.body)
                if explain is not None and photo.maps is not None:
                    _explain_to(explain, index, kept.pop(index), row, model, photo.maps, limits)
                drift.observe(AnsweredPhoto(b"", row["path"], model, photo, stats, got))
        assert len(rows) == start + len(chunk)
    return rows


def _explain_to(
    folder: Path, index: int, data: bytes, row: dict[str, Any], model: LoadedModel,
    maps: np.ndarray, limits: ImageLimits,
) -> None:  # fmt: skip
    """The photo (longest side DRAWN) with each task's heatmap on it, beside the others."""
    from carinspect.data.decoding.images import open_image
    from carinspect.evaluation.heatmap import heatmap, overlay

    # reduced in the decoder: a 12-megapixel phone photo is not decoded whole to draw 512 px
    photo = open_image(data, limits, DRAWN).decode().image
    photo.thumbnail((DRAWN, DRAWN))
    answers = row.get("tasks") or {model.tasks[0].name: row}
    for task in model.tasks:
        got = answers[task.name]
        shown = shown_class(got, task.classes)
        cam = maps[task.columns][task.classes.index(shown)]
        suffix = f".{task.name}" if model.multitask else ""
        path = folder / f"{index:05d}_{Path(row['path']).stem}{suffix}.png"
        folder.mkdir(parents=True, exist_ok=True)
        picture = overlay(photo, heatmap(cam, photo.width, photo.height, model.spec))
        write_bytes_atomic(path, png(picture))
        got["explanation"] = {"label": shown, "file": str(path)}


def label_counts(model: LoadedModel, rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``{task: {label: photos}}`` of the answered rows, labels in the order first answered."""
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        if "error" in row:
            continue
        answers = row.get("tasks") or {model.tasks[0].name: row}  # a row is the answer's body
        for task, label in ((t, str(a["label"])) for t, a in answers.items()):
            mine = counts.setdefault(task, {})
            mine[label] = mine.get(label, 0) + 1
    return counts


def write_predictions(rows: list[dict[str, Any]], out: Path, model: LoadedModel) -> None:
    """``out`` as JSON (a list of rows) or CSV (one column per class probability).

    Several tasks: the CSV has ``<task>:label``, ``<task>:confidence`` and ``<task>:p_<class>``
    columns for each task.
    """
    if out.suffix.lower() == ".json":
        write_json_atomic(out, rows)
        return
    if out.suffix.lower() != ".csv":
        raise InputError(f"--out {out}: use a .json or .csv file name")
    tasks = [(t.name, t.classes) for t in model.tasks] if model.multitask else [("", model.classes)]
    fields = ["path"]
    for name, classes in tasks:
        prefix = f"{name}:" if name else ""
        fields += [f"{prefix}label", f"{prefix}confidence", *(f"{prefix}p_{c}" for c in classes)]
    fields += ["error", "detail"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = {k: row.get(k, "") for k in ("path", "error", "detail")}
        answers = row.get("tasks") or ({"": row} if "label" in row else {})
        for name, got in answers.items():
            prefix = f"{name}:" if name else ""
            flat[f"{prefix}label"], flat[f"{prefix}confidence"] = got["label"], got["confidence"]
            flat.update({f"{prefix}p_{c}": p for c, p in got["probabilities"].items()})
        writer.writerow(flat)
    write_text_atomic(out, buf.getvalue())


def folder_truth(target: str, rows: list[dict[str, Any]], classes: list[str]) -> list[str | None]:
    """Each row's class by its folder under ``target`` (``target/<class>/...``), else None.

    Only a folder tree whose first level names at least one of ``classes`` counts as labelled:
    a photo directly in ``target`` or under a folder that is not a class has no truth.
    """
    root = Path(target)
    if target.startswith("s3://") or not root.is_dir():
        return [None] * len(rows)
    truth: list[str | None] = []
    for row in rows:
        parts = Path(row["path"]).relative_to(root).parts
        truth.append(parts[0] if len(parts) > 1 and parts[0] in classes else None)
    return truth if any(t is not None for t in truth) else [None] * len(rows)


def confusion_text(
    truth: list[str | None], rows: list[dict[str, Any]], classes: list[str], task: str = ""
) -> list[str]:
    """Accuracy and a confusion table of the answers against ``truth`` (rows with one)."""
    pairs = []
    for t, row in zip(truth, rows, strict=True):
        if t is None or "error" in row:
            continue
        got = row["tasks"][task] if task else row
        pairs.append((t, got["label"]))
    if not pairs:
        return []
    # uncertain always has its column, so the table has one shape for every model
    answers = [*classes, *sorted(({a for _, a in pairs} | {"uncertain"}) - set(classes))]
    right = sum(t == a for t, a in pairs)
    answered = sum(a in classes for _, a in pairs)
    named = f" ({task})" if task else ""
    head = (
        f"against the folder names{named}: accuracy {right / len(pairs):.3f} "
        f"({right} of {len(pairs)} photos in class folders)"
    )
    if answered < len(pairs):  # an uncertain answer counts as wrong above; here, left out
        head += (
            f"; {len(pairs) - answered} uncertain, accuracy "
            f"{right / max(answered, 1):.3f} on the {answered} answered"
        )
    lines = [head]
    width = max(len("true \\ answer"), *(len(c) for c in classes))
    cols = [max(len(a), 5) for a in answers]
    lines.append(
        "true \\ answer".ljust(width)
        + "  "
        + "  ".join(a.rjust(w) for a, w in zip(answers, cols, strict=True))
    )
    for c in classes:
        counts = [sum(1 for t, a in pairs if t == c and a == x) for x in answers]
        if sum(counts):
            lines.append(
                c.ljust(width)
                + "  "
                + "  ".join(str(n).rjust(w) for n, w in zip(counts, cols, strict=True))
            )
    return lines
