"""A torch Dataset over ingest's images (per-file cache or shards), selected by splits.csv."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.tasks import MISSING, TaskSpec
from carinspect.data.intake.manifest import (
    ManifestError,
    SplitRow,
    label_of,
    read_splits,
    row_tasks,
)
from carinspect.data.loading.augment import apply_augment
from carinspect.data.loading.preprocess import preprocess
from carinspect.data.storage.store import FileStore, ImageStore, open_store


@dataclass(frozen=True)
class Sample:
    """One image of a split: its cache path and class index (several tasks: one per task)."""

    path: Path
    label: int | tuple[int, ...]


def load_split(splits_csv: Path, image_root: Path, split: str, classes: list[str]) -> list[Sample]:
    """Samples of ``split`` of a single-task splits.csv, labelled by index into ``classes``."""
    return load_task_split(splits_csv, image_root, split, [TaskSpec(name="label", classes=classes)])


def load_task_split(
    splits_csv: Path, image_root: Path, split: str, tasks: Sequence[TaskSpec]
) -> list[Sample]:
    """Samples of ``split``; the cache files must exist under ``image_root``.

    One task: each label is a class index. Several: a tuple of one index per task, with
    :data:`MISSING` where the image is not labelled for that task.
    """
    all_rows = read_splits(Path(splits_csv))
    rows: list[SplitRow] = [r for r in all_rows if r.split == split]
    if len(tasks) > 1 and row_tasks(all_rows) != [t.name for t in tasks]:
        raise ManifestError(
            f"{splits_csv}: labelled for tasks {row_tasks(all_rows)}, not {[t.name for t in tasks]}"
        )
    indexes = [{c: i for i, c in enumerate(t.classes)} for t in tasks]
    samples = []
    for r in rows:
        found: list[int] = []
        for task, index in zip(tasks, indexes, strict=True):
            label = label_of(r, task.name) if len(tasks) > 1 else r.label
            if label and label not in index:
                named = f" of task {task.name!r}" if len(tasks) > 1 else ""
                raise ManifestError(
                    f"{splits_csv}: label {label!r}{named} is not one of {task.classes}"
                )
            found.append(index[label] if label else MISSING)
        samples.append(
            Sample(Path(image_root) / r.path, tuple(found) if len(tasks) > 1 else found[0])
        )
    missing = open_store(Path(image_root)).missing([s.path for s in samples])
    if missing is not None:
        raise ManifestError(
            f"{splits_csv}: cached image {missing} does not exist (run ingest again)"
        )
    return samples


def sample_labels(samples: list[Sample], task: int = 0) -> list[int]:
    """Class index of every sample for the ``task``-th task, in order."""
    return [s.label if isinstance(s.label, int) else s.label[task] for s in samples]


def class_names(splits_csv: Path) -> list[str]:
    """Sorted class names present in splits.csv."""
    return sorted({r.label for r in read_splits(Path(splits_csv))})


def split_tasks(splits_csv: Path, single: str = "label") -> list[TaskSpec]:
    """The tasks of splits.csv with their sorted classes; ``single`` names a lone task."""
    rows = read_splits(Path(splits_csv))
    names = row_tasks(rows)
    if not names:
        return [TaskSpec(name=single, classes=sorted({r.label for r in rows}))]
    return [TaskSpec(name=t, classes=sorted({label_of(r, t) for r in rows} - {""})) for t in names]


class ImageDataset(Dataset[tuple[torch.Tensor, Any]]):
    """Cached image -> (augmentation) -> the shared preprocessing -> (tensor, class index).

    Several tasks: the target is a LongTensor of one class index per task (batches stack it to
    ``[batch, tasks]``), :data:`MISSING` where the image is not labelled for a task.

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
        store: ImageStore | None = None,
    ) -> None:
        self.samples = samples
        self.spec = spec
        self.augment = augment
        self.seed = seed
        self.store: ImageStore = store if store is not None else FileStore(Path("."))
        self._pixels: list[np.ndarray] | None = None

    def preload(self, workers: int = 2) -> int:
        """Decode every image once and keep the pixels in memory; returns bytes held.

        DataLoader workers are forked after this, so they share the arrays instead of decoding
        a PNG per sample per epoch (the largest per-sample cost after augmentation). From
        shards, neighbouring images are fetched together.
        """
        from concurrent.futures import ThreadPoolExecutor

        data = self.store.read_many([s.path for s in self.samples], threads=max(1, workers) * 4)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            self._pixels = list(pool.map(decode_png, data))
        return sum(a.nbytes for a in self._pixels)

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self, task: int = 0) -> list[int]:
        """Class index of every sample for the ``task``-th task, in order."""
        return sample_labels(self.samples, task)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, Any]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        sample = self.samples[i]
        if self._pixels is not None:
            pixels = self._pixels[i]
        else:
            pixels = decode_png(self.store.read_many([sample.path], threads=1)[0])
        if self.augment is not None:
            seed = int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0])
            pixels = apply_augment(self.augment, pixels, seed)
        label = sample.label
        target = label if isinstance(label, int) else torch.tensor(label, dtype=torch.long)
        return torch.from_numpy(preprocess(pixels, self.spec)), target


def decode_png(data: bytes | memoryview) -> np.ndarray:
    """The RGB pixels of an image ingest stored."""
    import io

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def dataset_for(
    samples: list[Sample],
    spec: PreprocessSpec,
    image_root: Path,
    augment: Any | None = None,
    seed: int = 0,
) -> ImageDataset:
    """An :class:`ImageDataset` reading from the store of ``image_root`` (files or shards)."""
    return ImageDataset(samples, spec, augment, seed, open_store(Path(image_root)))


def loader_for(
    dataset: ImageDataset,
    batch_size: int,
    sampler: torch.utils.data.Sampler[Any] | list[int],
    workers: int,
    drop_last: bool,
) -> torch.utils.data.DataLoader[tuple[torch.Tensor, Any]]:
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
