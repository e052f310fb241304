"""Content fingerprints: sha256 for exact duplicates, a 64-bit difference hash for near ones."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from carinspect.data.intake.groups import DisjointSet


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def dhash(img: Image.Image) -> int:
    """64-bit difference hash: robust to re-encoding, resizing and small colour changes."""
    small = img.convert("L").resize((9, 8), Image.Resampling.LANCZOS)
    px = np.asarray(small, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def near_duplicate_groups(hashes: list[int], max_distance: int) -> list[int]:
    """Cluster images whose hashes differ in at most ``max_distance`` bits.

    Returns, for each image, the index of the first image of its cluster (transitive closure).
    Quadratic in the number of images but vectorised: ~1 s for 20k images.
    """
    n = len(hashes)
    ds = DisjointSet(n)
    if n < 2:
        return ds.labels()
    arr = np.array(hashes, dtype=np.uint64)
    for i in range(n - 1):
        dist = np.bitwise_count(arr[i + 1 :] ^ arr[i])
        for j in np.nonzero(dist <= max_distance)[0]:
            ds.union(i, i + 1 + int(j))
    return ds.labels()
