"""Turn ``data.source`` into a list of labelled files, whatever the kind of source.

Kinds: ``demo``; a local folder (one subfolder per class); a CSV manifest
(``path,label[,split][,group]``, or a column per task); COCO JSON (one category per image, or
one per task through ``data.coco_tasks``); ``s3://bucket/prefix``
(one sub-prefix per class, boto3's standard credential chain, ``AWS_ENDPOINT_URL`` honoured);
``dvc://<repo>@<rev>#<path>`` (a folder per class inside a git+DVC repository, via dvc.api).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carinspect.config import SPLIT_NAMES, DemoConfig
from carinspect.data.storage.objects import ObjectError, S3Prefix, parse_s3_uri
from carinspect.errors import InputError

logger = logging.getLogger(__name__)


class SourceError(InputError):
    """A source that cannot be read at all (as opposed to single bad files, which are dropped)."""


@dataclass(frozen=True)
class SourceItem:
    """One labelled file: ``source`` is how reports name it, ``read`` fetches its bytes."""

    source: str
    label: str
    read: Callable[[], bytes]
    split: str | None = None
    group: str | None = None
    # several tasks trained together: every task's label ("" where the file has none);
    # ``label`` is then the first task's
    labels: dict[str, str] | None = None


@dataclass(frozen=True)
class Rejected:
    """A file refused before decoding (missing, unlabelled, ambiguous)."""

    source: str
    label: str
    reason: str
    detail: str


@dataclass
class ResolvedSource:
    """What a source holds: the files to decode and those already refused."""

    kind: str
    uri: str
    items: list[SourceItem] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    task: str = "label"  # what ``SourceItem.label`` holds: a CSV manifest's chosen column
    tasks: list[str] = field(default_factory=lambda: ["label"])  # trained together, first = task
    # a CSV manifest with a column per task: labelled files per class of every task
    task_counts: dict[str, dict[str, int]] = field(default_factory=dict)


def source_kind(source: str) -> str:
    """Classify a ``data.source`` string: demo, s3, dvc, csv, coco or folder."""
    if source == "demo":
        return "demo"
    if source.startswith("s3://"):
        return "s3"
    if source.startswith("dvc://"):
        return "dvc"
    suffix = Path(source).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".json":
        return "coco"
    return "folder"


def _read_file(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def folder_source(root: Path, display: str) -> ResolvedSource:
    """The images of ``root/<class>/``, shown as ``display/<class>/<file>`` in reports."""
    if not root.is_dir():
        raise SourceError(
            f"data.source {display!r}: not found, or not a folder, .csv, .json, s3:// or dvc://"
        )
    resolved = ResolvedSource("folder", display)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise SourceError(
            f"data.source {display!r}: no class subfolders (expected <class>/<image>)"
        )
    for class_dir in class_dirs:
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and not any(
                part.startswith(".") for part in path.relative_to(root).parts
            ):
                shown = f"{display.rstrip('/')}/{path.relative_to(root).as_posix()}"
                resolved.items.append(SourceItem(shown, class_dir.name, _read_file(path)))
    return resolved


_CSV_FIXED = ("path", "split", "group")


def csv_task_columns(path: Path, columns: list[str], task: str | list[str] | None) -> list[str]:
    """The column(s) of a CSV manifest that hold the classes to train on.

    A manifest may hold one column per task (``path,cleanliness,damage[,split][,group]``):
    every column besides path, split and group is a task. ``task`` names the one to train on,
    or a list of them to train together (one head each); left out, it is ``label`` when there
    is such a column, else the only task column.
    """
    tasks = [c for c in columns if c not in _CSV_FIXED]
    if task is not None:
        wanted = [task] if isinstance(task, str) else list(task)
        unknown = [t for t in wanted if t not in tasks]
        if unknown:
            raise SourceError(
                f"{path}: data.task {unknown[0]!r} is not a column of the CSV manifest; its task "
                f"columns are {tasks}"
            )
        return wanted
    if "label" in tasks or len(tasks) == 1:
        return ["label" if "label" in tasks else tasks[0]]
    raise SourceError(
        f"{path}: the CSV manifest has {len(tasks)} task columns {tasks} and none is named "
        "label: set data.task to the one to train on (or a list of them to train together)"
    )


def _csv(path: Path, task: str | list[str] | None) -> ResolvedSource:
    if not path.is_file():
        raise SourceError(f"data.source {str(path)!r}: CSV manifest not found")
    resolved = ResolvedSource("csv", str(path))
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "path" not in columns or not set(columns) - set(_CSV_FIXED):
            raise SourceError(
                f"{path}: CSV manifest has the columns {columns}; expected a header "
                "path,label[,split][,group] or one column per task: path,<task>[,<task>...]"
                "[,split][,group]"
            )
        trained = csv_task_columns(path, columns, task)
        resolved.task, resolved.tasks = trained[0], trained
        others = [c for c in columns if c not in _CSV_FIXED]
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            raw_path, label = row.get("path", ""), row.get(trained[0], "")
            labels = {t: row.get(t, "") for t in trained} if len(trained) > 1 else None
            split = row.get("split") or None
            group = row.get("group") or None
            if split is not None and split not in SPLIT_NAMES:
                raise SourceError(
                    f"{path}, line {line}: split {split!r} is not one of {list(SPLIT_NAMES)}"
                )
            file_path = Path(raw_path) if Path(raw_path).is_absolute() else path.parent / raw_path
            if not raw_path:
                raise SourceError(f"{path}, line {line}: empty path")
            if not file_path.is_file():
                resolved.rejected.append(
                    Rejected(raw_path, label, "missing_file", f"{file_path} not found")
                )
                continue
            for other in others:  # what the manifest holds for every task, trained on or not
                if row.get(other):
                    counts = resolved.task_counts.setdefault(other, {})
                    counts[row[other]] = counts.get(row[other], 0) + 1
            if not (any(labels.values()) if labels else label):
                resolved.rejected.append(
                    Rejected(raw_path, "", "no_label", f"line {line} has no {' or '.join(trained)}")
                )
            else:
                resolved.items.append(
                    SourceItem(raw_path, label, _read_file(file_path), split, group, labels)
                )
    return resolved


def _require(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise SourceError(f"{where}: missing key {key!r}")
    return obj[key]


def _coco(
    path: Path, task: str | list[str] | None, coco_tasks: dict[str, list[str]]
) -> ResolvedSource:
    """One category per image, or with ``coco_tasks`` one category per image and task."""
    if not path.is_file():
        raise SourceError(f"data.source {str(path)!r}: COCO JSON file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SourceError(f"{path}: not valid JSON: {err}") from None
    images, annotations = (
        _require(doc, "images", str(path)),
        _require(doc, "annotations", str(path)),
    )
    categories = {
        _require(c, "id", f"{path}: categories[{i}]"): str(
            _require(c, "name", f"{path}: categories[{i}]")
        )
        for i, c in enumerate(_require(doc, "categories", str(path)))
    }
    labels: dict[Any, set[str]] = defaultdict(set)
    for i, ann in enumerate(annotations):
        where = f"{path}: annotations[{i}]"
        cat = _require(ann, "category_id", where)
        if cat not in categories:
            raise SourceError(f"{where}: category_id {cat!r} is not in categories")
        labels[_require(ann, "image_id", where)].add(categories[cat])
    groups = _coco_task_groups(path, task, coco_tasks, set(categories.values()))
    resolved = ResolvedSource("coco", str(path))
    resolved.task, resolved.tasks = next(iter(groups)), list(groups)
    for i, image in enumerate(images):
        where = f"{path}: images[{i}]"
        name = str(_require(image, "file_name", where))
        found = labels.get(_require(image, "id", where), set())
        per_task = {t: sorted(found & members) for t, members in groups.items()}
        clash = next(((t, c) for t, c in per_task.items() if len(c) > 1), None)
        file_path = path.parent / name
        first = per_task[resolved.task][0] if per_task[resolved.task] else ""
        if not any(per_task.values()):
            resolved.rejected.append(Rejected(name, "", "no_annotation", "image has no annotation"))
        elif clash is not None:
            where_task = f" for task {clash[0]!r}" if coco_tasks else ""
            resolved.rejected.append(
                Rejected(name, "", "multiple_categories", f"annotated as {clash[1]}{where_task}")
            )
        elif not file_path.is_file():
            resolved.rejected.append(
                Rejected(name, first, "missing_file", f"{file_path} not found")
            )
        else:
            multi = {t: c[0] if c else "" for t, c in per_task.items()} if len(groups) > 1 else None
            resolved.items.append(SourceItem(name, first, _read_file(file_path), labels=multi))
    return resolved


def _coco_task_groups(
    path: Path,
    task: str | list[str] | None,
    coco_tasks: dict[str, list[str]],
    names: set[str],
) -> dict[str, set[str]]:
    """Category names per trained task: every category as ``label`` without ``coco_tasks``."""
    if not coco_tasks:
        if task is not None:
            raise SourceError(
                f"{path}: data.task {task!r} needs data.coco_tasks (the categories of each task)"
            )
        return {"label": names}
    for name, members in coco_tasks.items():
        unknown = sorted(set(members) - names)
        if unknown:
            raise SourceError(
                f"data.coco_tasks.{name}: categories {unknown} are not in {path} "
                f"(its categories: {sorted(names)})"
            )
    wanted = list(coco_tasks) if task is None else [task] if isinstance(task, str) else task
    missing = [t for t in wanted if t not in coco_tasks]
    if missing:
        raise SourceError(
            f"data.task {missing[0]!r} is not a task of data.coco_tasks {list(coco_tasks)}"
        )
    return {t: set(coco_tasks[t]) for t in wanted}


def s3_objects(uri: str, what: str = "data.source") -> list[tuple[str, Callable[[], bytes]]]:
    """(key, reader) for every object under an ``s3://bucket/prefix``, sorted by key.

    Through :class:`~carinspect.data.storage.objects.S3Prefix`, as every S3 user of carinspect: one
    client set-up, and one wording of S3's refusals.
    """
    try:
        prefix = S3Prefix(uri)
        names = prefix.names()
    except ObjectError as err:
        raise SourceError(f"{what} {err}") from None

    def reader(name: str) -> Callable[[], bytes]:
        return lambda: prefix.read(name)

    return [(prefix.prefix + name, reader(name)) for name in names]


def _s3(uri: str) -> ResolvedSource:
    try:
        bucket, prefix = parse_s3_uri(uri)
    except ObjectError as err:
        raise SourceError(f"data.source {err}") from None
    resolved = ResolvedSource("s3", uri)
    objects = s3_objects(f"s3://{bucket}/{prefix}")
    for key, read in objects:
        rel = key[len(prefix) :]
        label, sep, rest = rel.partition("/")
        if (
            not sep
            or not rest
            or rest.endswith("/")
            or any(p.startswith(".") for p in rel.split("/"))
        ):
            continue  # objects beside the class prefixes, folder markers, hidden files
        resolved.items.append(SourceItem(f"s3://{bucket}/{key}", label, read))
    if not resolved.items:
        raise SourceError(f"data.source {uri!r}: no objects under <class>/ sub-prefixes")
    return resolved


def parse_dvc_uri(uri: str) -> tuple[str, str | None, str]:
    """Split ``dvc://<repo>@<rev>#<path>`` into (repo, rev or None, path)."""
    body = uri[len("dvc://") :]
    repo_rev, sep, path = body.partition("#")
    if not sep or not path.strip("/"):
        raise SourceError(f"data.source {uri!r}: expected dvc://<repo>@<rev>#<path>")
    repo, rev = repo_rev, None
    at = repo_rev.rfind("@")
    if at > 0 and ":" not in repo_rev[at + 1 :]:  # git@host:org/repo has no rev
        repo, rev = repo_rev[:at], repo_rev[at + 1 :] or None
    if not repo:
        raise SourceError(f"data.source {uri!r}: no repository")
    return repo, rev, path.strip("/")


@contextlib.contextmanager
def _dvc(uri: str) -> Iterator[ResolvedSource]:
    from dvc.api import DVCFileSystem

    repo, rev, path = parse_dvc_uri(uri)
    with tempfile.TemporaryDirectory(prefix="carinspect-dvc-") as tmp:
        try:
            fs = DVCFileSystem(repo, rev=rev)
            if not fs.isdir(path):
                raise SourceError(
                    f"data.source {uri!r}: {path!r} is not a folder at {rev or 'HEAD'}"
                )
            fs.get(path, str(Path(tmp) / "data"), recursive=True)
        except SourceError:
            raise
        except Exception as err:  # dvc/scmrepo raise many unrelated types
            raise SourceError(f"data.source {uri!r}: cannot read through DVC: {err}") from err
        resolved = folder_source(Path(tmp) / "data", uri)
        resolved.kind = "dvc"
        yield resolved


def _demo(cfg: DemoConfig) -> ResolvedSource:
    from carinspect.data.intake.demo import demo_files

    resolved = ResolvedSource("demo", "demo")
    for f in demo_files(cfg):
        resolved.items.append(SourceItem(f"demo://{f.label}/{f.name}", f.label, f.make))
    return resolved


@contextlib.contextmanager
def open_source(
    source: str,
    demo: DemoConfig | None = None,
    task: str | list[str] | None = None,
    coco_tasks: dict[str, list[str]] | None = None,
) -> Iterator[ResolvedSource]:
    """Resolve ``source``; files stay readable until the block ends (dvc:// uses a temp copy).

    ``task``: the column of a CSV manifest (see :func:`csv_task_columns`), or the task of
    ``coco_tasks`` (COCO categories per task), to train on; a list trains them together.
    Other sources hold one label per file, so they take no task.
    """
    kind = source_kind(source)
    if task is not None and kind not in ("csv", "coco"):
        raise SourceError(
            f"data.task {task!r} names a column of a CSV manifest, but data.source {source!r} is "
            f"a {kind} source with one label per image: leave data.task unset"
        )
    if coco_tasks and kind != "coco":
        raise SourceError(
            f"data.coco_tasks maps COCO categories to tasks, but data.source {source!r} is a "
            f"{kind} source: leave data.coco_tasks empty"
        )
    logger.info("reading %s source %s", kind, source)
    if kind == "dvc":
        with _dvc(source) as resolved:
            yield resolved
        return
    if kind == "demo":
        yield _demo(demo or DemoConfig())
    elif kind == "s3":
        yield _s3(source)
    elif kind == "csv":
        yield _csv(Path(source), task)
    elif kind == "coco":
        yield _coco(Path(source), task, coco_tasks or {})
    else:
        yield folder_source(Path(source), source)
