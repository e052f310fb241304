"""Stream a split out of shards: a disjoint, seeded, per-epoch shuffled share per rank and worker.

The epoch's draw is the one :class:`~carinspect.data.loading.samplers.ShardedEpochSampler` makes for
the per-file cache (same seed, same sampler kind): every image is taken as many times as that
draw takes it, so an epoch over shards has exactly the class balance of an epoch over files.
What changes is the order, chosen so that reading is sequential:

1. the shards are put in a random order (seeded by seed and epoch), each shard's images kept
   in file order and repeated as often as the draw takes them: the epoch's *plan*, the same on
   every rank;
2. rank ``r`` takes the ``r``-th contiguous slice of the plan (equal sizes: the draw is padded
   to a multiple of the world size, as DistributedSampler pads);
3. the slice is cut into *blocks* of at most ``window`` images (whole batches; a multiple of
   the worker count of them, of equal size to a batch, so no worker idles while another
   finishes); block ``k`` belongs to DataLoader worker ``k % workers``, which fetches it with
   one range request per shard it touches, shuffles it (seeded by seed, epoch, rank and
   block), and yields its batches, fetching its next block while it decodes this one.

Batches are whole inside a block, so no batch is split between workers, and the DataLoader's
round-robin over workers gives one fixed order for a given (seed, epoch, world size, workers).
:meth:`ShardStream.start_at` continues that order from any step of the epoch (a mid-epoch
resume): each worker skips the batches already consumed without fetching them, and worker ids
are rotated so that the round-robin picks up where it stopped.

Shuffling is therefore global across shards and local (``window`` images) inside them; with
images packed into shards by sha256, a window holds every class in about its overall share.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.data.loading.augment import apply_augment
from carinspect.data.loading.dataset import Sample, decode_png
from carinspect.data.loading.preprocess import preprocess
from carinspect.data.loading.samplers import SamplerKind, ShardedEpochSampler
from carinspect.data.storage.store import Blob, ShardStore
from carinspect.memory import fixed_mmap_threshold


class ShardStream(IterableDataset[tuple[torch.Tensor, Any]]):
    """``samples`` of one split, read from ``store``'s shards; see the module docstring.

    ``train`` mode: the sampler's draw (``kind``, ``strata``), shuffled, padded, batches of
    ``batch_size`` with the last partial one dropped. Otherwise (evaluation): every image once
    in index order, ranks taking contiguous unpadded slices, nothing dropped;
    :meth:`order` says which sample each yielded item is.
    """

    def __init__(
        self,
        store: ShardStore,
        samples: Sequence[Sample],
        spec: PreprocessSpec,
        batch_size: int,
        *,
        train: bool = True,
        augment: Any | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        kind: SamplerKind = "none",
        strata: Sequence[int] | None = None,
        window: int = 1024,
        threads: int = 4,
    ) -> None:
        if not samples:
            raise ValueError("no images to stream")
        self.store = store
        self.spec, self.augment, self.seed = spec, augment, seed
        self.batch_size, self.train, self.threads = batch_size, train, threads
        self.rank, self.world_size = rank, world_size
        rows = store.rows([s.path for s in samples])
        self._by_row = np.argsort(rows, kind="stable")  # samples in index order (shard, offset)
        self.rows = rows[self._by_row]
        labels = [s.label if isinstance(s.label, int) else tuple(s.label) for s in samples]
        self.multi = not isinstance(labels[0], int)
        self.labels = np.asarray(labels, dtype=np.int64)[self._by_row]
        self.shard_of = store.shard_of[self.rows]
        self.n_shards = len(store.shards)
        self.sampler = ShardedEpochSampler(
            list(strata) if strata is not None else [0] * len(samples),
            kind if train else "none",
            0,
            world_size,
            seed,
        )
        self.window = max(1, window // batch_size) * batch_size if train else batch_size
        self.epoch = 0
        self.start_step = 0

    # -- the epoch's plan ------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the draw and order of ``epoch`` (call before iterating)."""
        self.epoch, self.start_step = epoch, 0

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint needs to recompute the stream (as the per-file sampler's)."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`."""
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
        self.sampler.seed = self.seed

    def start_at(self, step: int) -> None:
        """Begin the current epoch at batch ``step`` of this rank (a mid-epoch resume)."""
        if not 0 <= step <= len(self) // self.batch_size + 1:
            raise ValueError(f"step {step} is outside the epoch's {len(self) // self.batch_size}")
        self.start_step = step

    def _counts(self) -> np.ndarray:
        """How often the epoch's draw takes each image (index order)."""
        if not self.train:
            return np.ones(len(self.rows), dtype=np.int64)
        self.sampler.set_epoch(self.epoch)
        drawn = np.bincount(self.sampler.global_indices().numpy(), minlength=len(self.rows))
        return drawn[self._by_row]

    def plan(self) -> np.ndarray:
        """Positions (index order) of this rank's images for the epoch, in stream order."""
        counts = self._counts()
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, 0x5EED])
            place = np.empty(self.n_shards, dtype=np.int64)
            place[rng.permutation(self.n_shards)] = np.arange(self.n_shards)
            order = np.argsort(place[self.shard_of], kind="stable")
        else:
            order = np.arange(len(self.rows))
        full = np.repeat(order, counts[order])
        if self.train:
            per_rank = len(full) // self.world_size  # the draw was padded to a multiple
            mine = full[self.rank * per_rank : (self.rank + 1) * per_rank]
            return mine[: len(mine) // self.batch_size * self.batch_size]
        cuts = np.linspace(0, len(full), self.world_size + 1).round().astype(int)
        return full[cuts[self.rank] : cuts[self.rank + 1]]

    def __len__(self) -> int:
        if self.train:
            per_rank = self.sampler.per_rank
            return per_rank // self.batch_size * self.batch_size
        cuts = np.linspace(0, len(self.rows), self.world_size + 1).round().astype(int)
        return int(cuts[self.rank + 1] - cuts[self.rank])

    def order(self) -> np.ndarray:
        """Index into ``samples`` of each item this rank yields (evaluation order)."""
        found: np.ndarray = self._by_row[self.plan()]
        return found

    # -- iteration ------------------------------------------------------------------------

    def _blocks(self, plan: np.ndarray, workers: int) -> list[np.ndarray]:
        """The plan cut into blocks of at most ``window`` images, whole batches each.

        Training: a multiple of ``workers`` blocks of about equal size, so that no worker
        idles while another finishes a larger share (the epoch takes as long as its busiest).
        """
        if not self.train or not len(plan):
            return [plan[i : i + self.window] for i in range(0, len(plan), self.window)]
        batches = len(plan) // self.batch_size
        count = -(-batches // max(1, self.window // self.batch_size))
        count = -(-max(count, workers) // workers) * workers
        cuts = np.linspace(0, batches, count + 1).round().astype(int) * self.batch_size
        return [plan[a:b] for a, b in itertools.pairwise(cuts.tolist()) if b > a]

    def _resume(self, batches: list[int], workers: int) -> tuple[list[int], int]:
        """Batches each worker delivered before ``start_step``, and the worker asked next.

        The DataLoader asks its workers in turn, skipping those that are done.
        """
        turns: list[int] = []
        j = 0
        while len(turns) <= self.start_step and any(j < b for b in batches):
            turns += [w for w in range(workers) if j < batches[w]]
            j += 1
        done = [turns[: self.start_step].count(w) for w in range(workers)]
        return done, turns[self.start_step] if self.start_step < len(turns) else 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        info = get_worker_info()
        workers, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        blocks = self._blocks(self.plan(), workers)
        per_worker = [
            sum(-(-len(b) // self.batch_size) for b in blocks[w::workers]) for w in range(workers)
        ]
        done, first = self._resume(per_worker, workers)
        me = (first + wid) % workers
        starts = np.cumsum([0] + [len(b) for b in blocks])
        mine = [(k, b) for k, b in enumerate(blocks) if k % workers == me]
        skip = done[me] * self.batch_size  # items of my blocks already consumed
        work: list[tuple[int, np.ndarray, int]] = []
        for k, block in mine:
            if skip >= len(block):
                skip -= len(block)
                continue
            work.append((k, block, skip))
            skip = 0
        with ThreadPoolExecutor(max_workers=1) as fetcher:
            pending: Future[list[Blob]] | None = None
            for n, (k, block, skip) in enumerate(work):
                order = self._shuffled(k, block)
                if pending is None:
                    pending = fetcher.submit(self._fetch, order[skip:])
                data = pending.result()
                pending = None
                if n + 1 < len(work):  # read the next block while this one is decoded
                    nk, nblock, nskip = work[n + 1]
                    pending = fetcher.submit(self._fetch, self._shuffled(nk, nblock)[nskip:])
                for j, (pos, raw) in enumerate(zip(order[skip:], data, strict=True)):
                    yield self._item(int(pos), raw, int(starts[k]) + skip + j)

    def _shuffled(self, k: int, block: np.ndarray) -> np.ndarray:
        if not self.train:
            return block
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, k])
        return block[rng.permutation(len(block))]

    def _fetch(self, positions: np.ndarray) -> list[Blob]:
        return self.store.read_rows(self.rows[positions], threads=self.threads)

    def _item(self, pos: int, raw: Blob, at: int) -> tuple[torch.Tensor, Any]:
        pixels = decode_png(raw)
        if self.augment is not None:
            # a function of (seed, epoch, rank, place in the epoch): the same after a resume
            seed = np.random.SeedSequence([self.seed, self.epoch, self.rank, at]).generate_state(1)
            pixels = apply_augment(self.augment, pixels, int(seed[0]))
        label = self.labels[pos]
        target = torch.from_numpy(label.copy()) if self.multi else int(label)
        return torch.from_numpy(preprocess(pixels, self.spec)), target


def stream_loader(stream: ShardStream, workers: int) -> torch.utils.data.DataLoader[Any]:
    """A DataLoader over ``stream``, pinned memory only on CUDA.

    Its workers are started afresh every epoch: they read the epoch and the resume step from
    the dataset.
    """
    return torch.utils.data.DataLoader(
        stream,
        batch_size=stream.batch_size,
        num_workers=workers,
        drop_last=False,  # the stream drops the train split's partial batch itself
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=_worker_init if workers > 0 else None,
    )


def _worker_init(_: int) -> None:
    # one decode at a time per worker; and the parent's objects are frozen out of the cyclic
    # collector, whose scans would otherwise copy every page of them into this process
    torch.set_num_threads(1)
    gc.freeze()
    fixed_mmap_threshold()  # see carinspect.memory: over a 50,000-image epoch
    # (benchmarks/shard_loader.py) a worker grew from 53 to 155 MiB without it, 96 MiB with
    # it, and stays at 51-55 MiB with it and the images handed on as views of their run


def eval_loader(
    samples: list[Sample],
    spec: PreprocessSpec,
    image_root: Any,
    batch_size: int,
    workers: int,
) -> tuple[torch.utils.data.DataLoader[Any], np.ndarray]:
    """A loader over every one of ``samples`` once, and which sample each yielded item is.

    Per-file cache: in the given order. Shards: streamed in index order (one request per run
    of neighbouring images), so the order says how to put the results back.
    """
    from pathlib import Path

    from carinspect.data.loading.dataset import ImageDataset, loader_for
    from carinspect.data.storage.store import open_store

    store = open_store(Path(image_root))
    if isinstance(store, ShardStore):
        stream = ShardStream(store, samples, spec, batch_size, train=False)
        return stream_loader(stream, workers), stream.order()
    ds = ImageDataset(samples, spec, store=store)
    indices = list(range(len(ds)))
    return loader_for(ds, batch_size, indices, workers, drop_last=False), np.arange(len(ds))
