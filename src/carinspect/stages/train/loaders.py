"""The train and val loaders: indexed datasets over the per-file cache, or streams over shards."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.contracts.tasks import TaskSpec
from carinspect.data.loading.augment import build_augment
from carinspect.data.loading.dataset import ImageDataset, Sample, load_task_split, loader_for
from carinspect.data.loading.samplers import EpochTagged, ShardedEpochSampler, shard
from carinspect.data.loading.streaming import ShardStream, stream_loader
from carinspect.data.storage.store import ShardStore, open_store
from carinspect.stages.train.inputs import TrainInputs
from carinspect.training import distributed as dist_utils

logger = logging.getLogger(__package__)


@dataclass(frozen=True)
class Loaders:
    """The train and val loaders, and what selects the train draw of an epoch."""

    sampler: ShardedEpochSampler | ShardStream
    train: torch.utils.data.DataLoader[Any]
    val: torch.utils.data.DataLoader[Any]
    tagged: EpochTagged | None = None  # per-file cache: what feeds the train loader indices

    @classmethod
    def build(
        cls,
        inputs: TrainInputs,
        info: dist_utils.DistInfo,
        spec: PreprocessSpec,
        train_samples: list[Sample],
        strata: list[int],
        tasks: list[TaskSpec],
    ) -> Loaders:
        """Per-file cache: indexed datasets and the sharded sampler; shards: two streams."""
        cfg = inputs.train
        store = open_store(inputs.ingest_dir)
        val_samples = load_task_split(inputs.splits, inputs.ingest_dir, "val", tasks)
        if isinstance(store, ShardStore):
            stream = ShardStream(
                store,
                train_samples,
                spec,
                cfg.batch_size,
                augment=build_augment(cfg.augment),
                seed=cfg.seed,
                rank=info.rank,
                world_size=info.world_size,
                kind=cfg.sampler,
                strata=strata,
                window=cfg.shuffle_window,
            )
            val = ShardStream(
                store,
                val_samples,
                spec,
                cfg.batch_size,
                train=False,
                rank=info.rank,
                world_size=info.world_size,
            )
            logger.info(
                "streaming %d training images from %d shards in %s", len(train_samples),
                len(store.shards), store.uri,
            )  # fmt: skip
            return cls(stream, stream_loader(stream, cfg.workers), stream_loader(val, cfg.workers))
        train_ds = ImageDataset(
            train_samples, spec, build_augment(cfg.augment), seed=cfg.seed, store=store
        )
        val_ds = ImageDataset(val_samples, spec, store=store)
        if cfg.cache_images:
            held = train_ds.preload() + val_ds.preload()
            logger.debug("decoded images held in memory: %.1f MiB", held / 2**20)
        sampler = ShardedEpochSampler(strata, cfg.sampler, info.rank, info.world_size, cfg.seed)
        tagged = EpochTagged(sampler)
        train_loader = loader_for(train_ds, cfg.batch_size, tagged, cfg.workers, drop_last=True)
        val_loader = loader_for(
            val_ds,
            cfg.batch_size,
            shard(len(val_ds), info.rank, info.world_size),
            cfg.workers,
            drop_last=False,
        )
        return cls(sampler, train_loader, val_loader, tagged)

    def start_at(self, step: int, batch_size: int) -> None:
        """Begin the next train pass at batch ``step`` of this rank (a resume inside an epoch)."""
        if isinstance(self.sampler, ShardStream):
            self.sampler.start_at(step)
        elif self.tagged is not None:
            self.tagged.start_at(step * batch_size)
