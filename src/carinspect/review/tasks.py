"""Feedback records as Label Studio tasks, and finished annotations back as labels.

A task shows the photo, why it was kept, and the model's answer as a pre-annotation (a
prediction with the answering version and its confidence), so the reviewer only corrects it. The
labelling config has one single-choice question per task of the model, named after the task, with
the classes the answering models know.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from carinspect.contracts.feedback import FeedbackRecord
from carinspect.review.client import ReviewError

IMAGE = "image"  # the image tag's name in the config, and the task data key it reads


def label_config(classes: dict[str, list[str]]) -> str:
    """A labelling config: the photo, why it was kept, one single choice per model task."""
    parts = [f'<Image name="{IMAGE}" value="${IMAGE}" maxWidth="100%"/>',
             '<Text name="why" value="$why"/>']  # fmt: skip
    for task, names in classes.items():
        choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in names)
        parts.append(f"<Header value={quoteattr(task)}/>")
        parts.append(
            f'<Choices name={quoteattr(task)} toName="{IMAGE}" choice="single" required="true" '
            f'showInLine="true">{choices}</Choices>'
        )
    return "<View>" + "".join(parts) + "</View>"


def classes_of(records: list[FeedbackRecord]) -> dict[str, list[str]]:
    """Each task's classes over the models that answered ``records`` (first seen first)."""
    out: dict[str, list[str]] = {}
    for record in records:
        for task, names in record.classes.items():
            known = out.setdefault(task, [])
            known += [n for n in names if n not in known]
    return out


def task_of(record: FeedbackRecord, image: str) -> dict[str, Any]:
    """The Label Studio task of one kept photo (``image``: its URL as Label Studio serves it)."""
    why = (
        "; ".join(
            f"{r.kind} {r.score:.2f}"
            + (f" ({r.task})" if r.task else "")
            + (f": {r.detail}" if r.detail else "")
            for r in record.reasons
        )
        or "kept before the feedback policy"
    )
    model = record.model
    version = f"{model.name or 'model'} v{model.version or '?'}"
    result = [
        {"from_name": task, "to_name": IMAGE, "type": "choices", "value": {"choices": [label]}}
        for task, label in record.labels.items()
        if label in record.classes.get(task, [])  # "uncertain" is no class: left to the reviewer
    ]
    data = {IMAGE: image, "sha256": record.sha256, "score": record.score, "why": why,
            "answered": ", ".join(f"{t}={v}" for t, v in record.labels.items()),
            "model_version": version, "received_at": record.received_at}  # fmt: skip
    task: dict[str, Any] = {"data": data}
    if result:
        task["predictions"] = [
            {"model_version": version, "score": _confidence(record), "result": result}
        ]
    return task


def _confidence(record: FeedbackRecord) -> float:
    """The answer's confidence (several tasks: the lowest of theirs)."""
    body = record.answer
    found = [float(a.get("confidence", 0.0)) for a in body.get("tasks", {}).values()]
    return min(found) if found else float(body.get("confidence", 0.0))


@dataclass(frozen=True)
class Reviewed:
    """One reviewed photo: the task, the photo's hash and its label per model task."""

    where: str  # "task 17", for messages
    sha256: str
    labels: dict[str, str]


def reviewed(tasks: list[dict[str, Any]], resolve: str = "refuse") -> list[Reviewed]:
    """The labels of every task a reviewer finished (skipped and unfinished tasks left out).

    Two annotations of one photo that disagree are refused, naming the task, unless ``resolve``
    is ``majority``: then the label most annotations gave wins, and a tie is still refused.
    """
    out, problems = [], []
    for task in tasks:
        done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if not done:
            continue
        sha = str(task.get("data", {}).get("sha256", ""))
        where = f"task {task.get('id')}"
        if not sha:
            problems.append(f"{where}: no sha256 in its data (not a task `review push` made)")
            continue
        labels: dict[str, str] = {}
        for name in sorted({r["from_name"] for a in done for r in a.get("result", [])}):
            given = [_choice(a, name) for a in done]
            votes = Counter(g for g in given if g)
            if not votes:
                continue
            top = votes.most_common()
            if len(top) > 1 and (resolve != "majority" or top[0][1] == top[1][1]):
                shown = " vs ".join(f"{label!r} ({n})" for label, n in top)
                problems.append(
                    f"{where} (photo {sha[:12]}): reviewers disagree on {name}: {shown}"
                )
                continue
            labels[name] = top[0][0]
        out.append(Reviewed(where, sha, labels))
    if problems:
        raise ReviewError(
            f"{len(problems)} task(s) refused, nothing imported (`--resolve majority` settles "
            f"disagreements a majority decides): {'; '.join(problems[:8])}"
        )
    return out


def _choice(annotation: dict[str, Any], name: str) -> str:
    for r in annotation.get("result", []):
        if r.get("from_name") == name:
            picked = r.get("value", {}).get("choices") or [""]
            return str(picked[0])
    return ""
