"""Image statistics and the population stability index, in numpy alone (serving imports it).

A reference profile records, for each statistic, the quantile bin edges of the training photos
and the share of them in each bin; a stream is compared with it by the population stability
index, PSI = sum((a - e) * ln(a / e)) over the bins, with e the reference's shares and a the
stream's. The usual reading: below 0.1 no shift, 0.1-0.25 a moderate one, above 0.25 a shift
worth acting on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

STATS = ("brightness", "contrast", "blur", "aspect")
ALERT_PSI = 0.25
_EPS = 1e-4  # a bin nobody fell in still counts a little: PSI stays finite
_LUMA = np.array([0.299, 0.587, 0.114])
_SIDE = 96  # stats are taken on the photo shrunk to about this short side: cheap, size-blind


def image_stats(pixels: np.ndarray) -> dict[str, float]:
    """Brightness, contrast, blur (log variance of the Laplacian) and aspect of an RGB photo.

    ``pixels`` is (H, W, 3) uint8. The photo is subsampled to a short side of about 96 px
    first, so a 12-megapixel upload costs what a thumbnail does and the blur figure does not
    depend on the upload's resolution.
    """
    h, w = pixels.shape[:2]
    step = max(1, min(h, w) // _SIDE)
    gray = (pixels[::step, ::step, :3].astype(np.float32) @ _LUMA.astype(np.float32)) / 255.0
    lap = (
        -4 * gray[1:-1, 1:-1] + gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:]
    )
    return {
        "brightness": float(gray.mean()),
        "contrast": float(gray.std()),
        "blur": float(np.log10(lap.var() + 1e-8)),
        "aspect": float(w / h),
    }


@dataclass(frozen=True)
class Binned:
    """A statistic of the reference photos: inner bin edges and each bin's share."""

    edges: tuple[float, ...]
    shares: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float], bins: int = 6) -> Binned:
        """Quantile bins of the reference values (ties merged, so a constant has one bin)."""
        v = np.asarray(values, dtype=np.float64)
        edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
        return cls(tuple(float(e) for e in edges), tuple(float(c) for c in counts / len(v)))

    def counts(self, values: Iterable[float]) -> np.ndarray:
        """How many of ``values`` fall in each of the reference's bins."""
        idx = np.searchsorted(np.asarray(self.edges), np.asarray(list(values)), side="right")
        return np.bincount(idx, minlength=len(self.shares)).astype(np.float64)

    def psi(self, values: Iterable[float]) -> float:
        """The population stability index of ``values`` against the reference."""
        return psi(np.asarray(self.shares), self.counts(values))


def psi(expected: np.ndarray, counts: np.ndarray) -> float:
    """PSI of observed ``counts`` against ``expected`` shares (both per bin, same order)."""
    total = counts.sum()
    if total == 0:
        return 0.0
    e = np.clip(np.asarray(expected, dtype=np.float64), _EPS, None)
    a = np.clip(counts / total, _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def share_psi(reference: dict[str, float], labels: Iterable[str]) -> float:
    """PSI of the predicted-class mix against the reference's class shares."""
    names = sorted(reference)
    seen = list(labels)
    counts = np.array([sum(1 for x in seen if x == n) for n in names], dtype=np.float64)
    return psi(np.array([reference[n] for n in names]), counts)
