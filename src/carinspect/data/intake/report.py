"""Markdown renderings of the ingest and split reports (report.json is the source of truth)."""

from __future__ import annotations

from typing import Any


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _mmm(d: dict[str, float]) -> str:
    return f"{d['min']:g} / {d['median']:g} / {d['max']:g}"


def render_ingest_report(report: dict[str, Any]) -> str:
    """report.md for ingest."""
    sections = (_summary, _classes, _tasks, _shortcut, _dropped, _near_duplicates)
    return "\n".join(line for section in sections for line in section(report)) + "\n"


def _summary(report: dict[str, Any]) -> list[str]:
    src = report["source"]
    out = [
        "# Data report: ingest",
        "",
        f"Source: `{src['uri']}` ({src['kind']}). Manifest sha256: `{report['manifest_sha256']}`.",
        "",
        f"**{report['images']} images** in {report['classes']} classes kept; "
        f"**{report['dropped']} files dropped**; imbalance ratio {report['imbalance_ratio']:g} "
        "(largest class / smallest).",
        "",
    ]
    shortcut = report["shortcut"]
    if shortcut.get("warning"):
        out += [
            "> **WARNING: shortcut.** "
            f"{', '.join(shortcut['features'])} alone separate the classes "
            f"(cross-validated AUC >= {shortcut['threshold']:g}). A model can score well here "
            "without looking at the vehicle: balance sizes and colour modes across classes, or "
            "evaluate on a subset where they do not differ.",
            "",
        ]
    return out


def _classes(report: dict[str, Any]) -> list[str]:
    header = ["class", "images", "width min/med/max", "height min/med/max", "aspect min/med/max",
              "grayscale", "formats"]  # fmt: skip
    rows = [
        [
            label,
            s["count"],
            _mmm(s["width"]),
            _mmm(s["height"]),
            _mmm(s["aspect_ratio"]),
            f"{s['grayscale_fraction']:.1%}",
            ", ".join(f"{k} {v}" for k, v in s["formats"].items()),
        ]
        for label, s in report["per_class"].items()
    ]
    return ["## Classes", "", *_table(header, rows)]


def _tasks(report: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if report.get("tasks"):
        out += [
            "",
            "## Tasks in the manifest",
            "",
            f"Trained on: `{report['task']}`. Labelled files per class of every task column "
            "(listed files that exist, before decoding; an empty cell is not counted):",
            "",
        ]
        out += _table(
            ["task", "classes"],
            [
                [task, ", ".join(f"{c} {n}" for c, n in counts.items())]
                for task, counts in report["tasks"].items()
            ],
        )
    if report.get("trained_tasks"):
        out += [
            "",
            "## Tasks trained together",
            "",
            "Kept images per class of each task (one head each; an image not labelled for a task "
            "does not count towards that task's loss). The tables above count the first task.",
            "",
        ]
        out += _table(
            ["task", "classes", "labelled"],
            [
                [task, ", ".join(f"{c} {n}" for c, n in counts.items()), str(sum(counts.values()))]
                for task, counts in report["trained_tasks"].items()
            ],
        )
    return out


def _shortcut(report: dict[str, Any]) -> list[str]:
    shortcut = report["shortcut"]
    out = ["", "## Shortcut check", ""]
    if not shortcut.get("checked"):
        return [*out, f"Not checked: {shortcut['reason']}."]
    out.append(
        f"Logistic regression on trivial features, {shortcut['folds']}-fold cross-validated AUC "
        f"(warning at {shortcut['threshold']:g}):"
    )
    out.append("")
    return out + _table(["features", "AUC"], [[k, f"{v:.3f}"] for k, v in shortcut["auc"].items()])


def _dropped(report: dict[str, Any]) -> list[str]:
    out = ["", f"## Dropped files ({report['dropped']})", ""]
    if not report["dropped_files"]:
        return [*out, "None."]
    return out + _table(
        ["file", "label", "reason", "detail"],
        [
            [f"`{d['source']}`", d["label"], d["reason"], d["detail"]]
            for d in report["dropped_files"]
        ],
    )


def _near_duplicates(report: dict[str, Any]) -> list[str]:
    out = ["", f"## Near-duplicates ({report['near_duplicate_groups']} groups)", ""]
    out.append("Near-duplicates are kept, and the split stage keeps each group in one split.")
    out.append("")
    for g in report["near_duplicates"]:
        mixed = " **(labels differ: check them)**" if len(g["labels"]) > 1 else ""
        out.append(f"- {', '.join(f'`{s}`' for s in g['sources'])}{mixed}")
    return out


def render_split_report(report: dict[str, Any]) -> str:
    """report.md for split."""
    splits = list(report["splits"])
    classes = sorted({c for s in report["splits"].values() for c in s["class_counts"]})
    out = [
        "# Data report: split",
        "",
        f"{report['images']} images in {report['units']} units (near-duplicate clusters and "
        f"groups move together); method: {report['method']}; seed {report['seed']}.",
        "",
    ]
    out += _table(
        ["class", *splits],
        [[c, *(report["splits"][s]["class_counts"].get(c, 0) for s in splits)] for c in classes]
        + [["**total**", *(report["splits"][s]["images"] for s in splits)]]
        + [["fraction", *(f"{report['splits'][s]['fraction']:.3f}" for s in splits)]],
    )
    if report.get("tasks"):
        out += [
            "",
            "## Tasks",
            "",
            f"Stratified on `{report['stratified_on']}`, the task with the rarest class. The "
            "table above counts the first task; images per class of every task:",
            "",
        ]
        rows = []
        for task, per_split in report["tasks"].items():
            names = sorted({c for counts in per_split.values() for c in counts})
            rows += [[task, c, *(per_split[s].get(c, 0) for s in splits)] for c in names]
        out += _table(["task", "class", *splits], rows)
    if report["warnings"]:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(out) + "\n"
