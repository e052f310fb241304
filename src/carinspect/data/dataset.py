"""A torch Dataset over the ingest cache, selected by splits.csv."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.data.augment import apply_augment
from carinspect.data.manifest import ManifestError, SplitRow, read_splits
from carinspect.data.preprocess import preprocess


@dataclass(frozen=True)
class Sample:
    """One image of a split: its cache path and class index."""

    path: Path
    label: int


def load_split(splits_csv: Path, image_root: Path, split: str, classes: list[str]) -> list[Sample]:
    """Samples of ``split``; the cache files must exist under ``image_root``."""
    rows: list[SplitRow] = [r for r in read_splits(Path(splits_csv)) if r.split == split]
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for r in rows:
        if r.label not in index:
            raise ManifestError(f"{splits_csv}: label {r.label!r} is not one of {classes}")
        samples.append(Sample(Path(image_root) / r.path, index[r.label]))
    missing = next((s.path for s in samples if not s.path.is_file()), None)
    if missing is not None:
        raise ManifestError(
            f"{splits_csv}: cached image {missing} does not exist (run ingest again)"
        )
    return samples


def class_names(splits_csv: Path) -> list[str]:
    """Sorted class names present in splits.csv."""
    return sorted({r.label for r in read_splits(Path(splits_csv))})


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Cached image -> (augmentation) -> the shared preprocessing -> (tensor, class index).

    Augmentation randomness is a function of (seed, epoch, index) only, so results do not depend
    on the number of DataLoader workers or processes, and a resumed run sees the same images.
    Items are fetched by index, or by ``(index, epoch)`` from an epoch-tagging sampler.
    """

    def __init__(
        self,
        samples: list[Sample],
        spec: PreprocessSpec,
        augment: Any | None = None,
        seed: int = 0,
    ) -> None:
        self.samples = samples
        self.spec = spec
        self.augment = augment
        self.seed = seed
        self._pixels: list[np.ndarray] | None = None

    def preload(self, workers: int = 2) -> int:
        """Decode every cached image once and keep the pixels in memory; returns bytes held.

        DataLoader workers are forked after this, so they share the arrays instead of decoding
        a PNG per sample per epoch (the largest per-sample cost after augmentation).
        """
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            self._pixels = list(pool.map(lambda s: _decode(s.path), self.samples))
        return sum(a.nbytes for a in self._pixels)

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self) -> list[int]:
        """Class index of every sample, in order."""
        return [s.label for s in self.samples]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        sample = self.samples[i]
        pixels = self._pixels[i] if self._pixels is not None else _decode(sample.path)
        if self.augment is not None:
            seed = int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0])
            pixels = apply_augment(self.augment, pixels, seed)
        return torch.from_numpy(preprocess(pixels, self.spec)), sample.label


def _decode(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def loader_for(
    dataset: ImageDataset,
    batch_size: int,
    sampler: torch.utils.data.Sampler[Any] | list[int],
    workers: int,
    drop_last: bool,
) -> torch.utils.data.DataLoader[tuple[torch.Tensor, int]]:
    """A DataLoader with settings that suit the cache (pinned memory only on CUDA)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_no_threads if workers > 0 else None,
    )


def _no_threads(_: int) -> None:
    # Each worker decodes one image at a time; intra-op threads there only fight the main process.
    torch.set_num_threads(1)
