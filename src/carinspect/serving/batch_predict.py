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

from carinspect.data.images import ImageError, ImageLimits
from carinspect.errors import InputError
from carinspect.io import write_json_atomic, write_text_atomic
from carinspect.serving.inference import answer, labels_of, prepare
from carinspect.serving.model_store import LoadedModel

Reader = Callable[[], bytes]


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
    from carinspect.data.sources import s3_objects

    bucket = uri.removeprefix("s3://").partition("/")[0]
    found = [
        (f"s3://{bucket}/{key}", read)
        for key, read in s3_objects(uri, "predict")
        if not key.endswith("/")
    ]
    if not found:
        raise InputError(f"{uri}: no objects under this prefix")
    return found


def _chunks(items: list[tuple[str, Reader]], size: int) -> Iterator[list[tuple[str, Reader]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict_inputs(
    model: LoadedModel, items: list[tuple[str, Reader]], limits: ImageLimits, batch_size: int
) -> list[dict[str, Any]]:
    """One row per input, in order: an answer, or ``error`` and ``detail``.

    When the model keeps a drift window, every answered photo goes into it, as in serving.
    """
    rows: list[dict[str, Any]] = []
    for chunk in _chunks(items, batch_size):
        good: list[tuple[int, np.ndarray, dict[str, float] | None]] = []
        start = len(rows)
        for name, read in chunk:
            try:
                good.append((len(rows), *prepare(read(), model, limits)))
                rows.append({"path": name})
            except ImageError as err:
                rows.append({"path": name, "error": err.reason, "detail": err.detail})
            except OSError as err:
                rows.append({"path": name, "error": "unreadable", "detail": str(err)})
        if good:
            probs = model.infer(np.stack([p for _, p, _ in good]))
            for (index, _, stats), row in zip(good, probs, strict=True):
                rows[index].update(answer(model, row))
                if model.drift is not None and stats is not None:
                    model.drift.add({**stats, **model.drift_of(row)}, labels_of(model, rows[index]))
        assert len(rows) == start + len(chunk)
    return rows


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
