"""Does a command's output have the shape a documented example shows?

The shape is what a reader relies on: the words, the columns of a table, the keys of a JSON
answer, the order of the lines. Figures, ids, hashes, times and user names vary from run to run
and are matched as "some value of that kind". A line ``...`` stands for any number of lines, and
``...`` inside a line for any text, as in the docs themselves. Log records (``12:00:01 INFO
carinspect...``, MLflow's and torch.onnx's progress lines) are matched where an example shows
them and may be left out where it does not: examples show what a reader needs, not every log
line. Markers that depend on the figures (an epoch's ``(best)``, a commit's ``+dirty``) are
optional.
"""

from __future__ import annotations

import json
import re
from typing import Any

# order matters: the longer, more specific kinds first
_KINDS = [
    (re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+(?:[+-]\d\d:\d\d|Z)?"), r"\S+"),  # ISO time
    (re.compile(r"\b\d\d:\d\d:\d\d(?:\.\d+)?\b"), r"\S+"),  # clock time
    (re.compile(r"\bsha256:[0-9a-f]{64}\b"), r"sha256:[0-9a-f]{64}"),
    (
        re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,64}\b(?:\+dirty)?"),
        r"[0-9a-f]{7,64}(?:\+dirty)?",
    ),  # an id, a digest or a commit (dirty or not)
    (re.compile(r"\b[\w.-]+@[\w.-]+\b"), r"\S+"),  # user@host
    (
        re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"),
        r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?",
    ),  # a figure (a unit after it stays literal: 2.83x, 64 px)
]
_ANY = "\x00ANY\x00"
_LOG = re.compile(
    r"^(?:\d\d:\d\d:\d\d(?:\.\d+)? (?:DEBUG|INFO|WARNING|ERROR) "
    r"|\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (?:DEBUG|INFO|WARNING|ERROR) "
    r"|\[torch\.onnx\] )"
)
_OPTIONAL = re.compile(r"\s\(best\)")


def is_log(line: str) -> bool:
    """A log record or a library's progress line, which an example may leave out."""
    return _LOG.match(line.strip()) is not None


def line_pattern(expected: str) -> re.Pattern[str]:
    """A regex for one expected line: literal words, values by kind, any amount of spacing."""
    text = _OPTIONAL.sub("", expected.strip()).replace("...", _ANY)
    parts: list[str] = []
    pos = 0
    while pos < len(text):
        best = None
        for regex, replacement in _KINDS:
            m = regex.search(text, pos)
            if m and (best is None or m.start() < best[0].start()):
                best = (m, replacement)
        if best is None:
            parts.append(_literal(text[pos:]))
            break
        m, replacement = best
        parts.append(_literal(text[pos : m.start()]))
        parts.append(replacement)
        pos = m.end()
    return re.compile("".join(parts))


def _literal(text: str) -> str:
    out = []
    for piece in re.split(r"(\s+)", text):
        if not piece:
            continue
        if piece.isspace():
            out.append(r"\s+")
        else:
            out.append(".*".join(re.escape(p) for p in piece.split(_ANY)))
    return "".join(out)


def _keys(value: Any) -> Any:
    """The key structure of a JSON value (values dropped, lists by their first item)."""
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys(value[0])] if value else []
    return None


def _json(line: str) -> Any:
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def line_matches(expected: str, actual: str) -> bool:
    """One expected line against one line of output."""
    shown = _json(expected)
    if shown is not None:
        got = _json(actual)
        return got is not None and _keys(got) == _keys(shown)
    return line_pattern(expected).fullmatch(_OPTIONAL.sub("", actual.strip())) is not None


def matches(expected: list[str], actual: list[str]) -> bool:
    """All expected lines, in order, against the output; ``...`` lines absorb any lines, and a
    log line the example does not show is passed over."""
    want = [line for line in expected if line.strip()]
    got = [line for line in actual if line.strip()]

    n = len(want)
    ellipsis = [line.strip() == "..." for line in want]

    def closure(states: set[int]) -> set[int]:
        """``...`` may stand for no lines: a state before one is also a state after it."""
        todo = list(states)
        while todo:
            i = todo.pop()
            if i < n and ellipsis[i] and i + 1 not in states:
                states.add(i + 1)
                todo.append(i + 1)
        return states

    states = closure({0})
    for line in got:  # states: how many expected lines the output so far can account for
        after: set[int] = set()
        for i in states:
            if i < n and ellipsis[i]:
                after.add(i)
            elif i < n and line_matches(want[i], line):
                after.add(i + 1)
            if is_log(line):
                after.add(i)
        states = closure(after)
        if not states:
            return False
    return n in states


def first_mismatch(expected: list[str], actual: list[str]) -> str:
    """A readable hint at where output and example part ways (for the failure message)."""
    want = [line for line in expected if line.strip() and line.strip() != "..."]
    got = [line for line in actual if line.strip()]
    j = 0
    for line in want:
        while j < len(got) and not line_matches(line, got[j]):
            j += 1
        if j == len(got):
            return f"no output line has the shape of: {line.strip()!r}"
        j += 1
    return "the lines are there, but others come between or after them"
