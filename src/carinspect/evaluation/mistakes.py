"""What went wrong: the test photos the model got wrong and the ones it was least sure of.

The rows name each photo by its original name (the manifest's ``source``), not the cache path,
so a person can open it; the contact sheet puts them side by side with label, answer and
probability under each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np

UNCERTAIN = 12  # correctly answered photos with the smallest margin, listed after the wrong ones
SHEET_MAX = 36  # thumbnails on the contact sheet
THUMB = 128


@dataclass(frozen=True)
class Mistake:
    """One listed photo: wrong (the answer is not the label) or uncertain (a small margin)."""

    index: int  # into the split's samples
    kind: str  # wrong | uncertain
    label: str
    predicted: str
    probability: float  # of the answer
    margin: float  # top probability minus the second


def pick(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> list[Mistake]:
    """Every wrong answer, most confident first, then the least certain right answers."""
    order = np.sort(probs, axis=1)
    margin = order[:, -1] - order[:, -2]
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]
    right = np.flatnonzero(pred == labels)
    right = right[np.argsort(margin[right], kind="stable")][:UNCERTAIN]
    return [
        Mistake(
            index=int(i),
            kind=kind,
            label=classes[int(labels[i])],
            predicted=classes[int(pred[i])],
            probability=round(float(probs[i, pred[i]]), 4),
            margin=round(float(margin[i]), 4),
        )
        for kind, picked in (("wrong", wrong), ("uncertain", right))
        for i in picked
    ]


def contact_sheet(
    images: Sequence[bytes | memoryview],
    captions: Sequence[str],
    wrong: Sequence[bool],
    path: Path,
) -> None:
    """Thumbnails in rows of six with a caption under each, red for a wrong answer."""
    from PIL import Image, ImageDraw

    cols, caption_h = 6, 28
    count = min(len(images), SHEET_MAX)
    rows = max(1, -(-count // cols))
    sheet = Image.new("RGB", (cols * THUMB, rows * (THUMB + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    if count == 0:
        draw.text((8, 8), "no wrong or uncertain test photos", fill="black")
    for k in range(count):
        with Image.open(BytesIO(bytes(images[k]))) as im:
            thumb = im.convert("RGB")
            thumb.thumbnail((THUMB, THUMB))
        x, y = (k % cols) * THUMB, (k // cols) * (THUMB + caption_h)
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        for n, line in enumerate(captions[k].split("\n")[:2]):
            colour = (200, 0, 0) if wrong[k] else (0, 0, 0)
            draw.text((x + 3, y + THUMB + 2 + 12 * n), line[:24], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
