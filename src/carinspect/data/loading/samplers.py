"""Epoch samplers that shard one draw across DDP ranks, reproducible from (seed, epoch).

PyTorch's WeightedRandomSampler has no distributed form (pytorch/pytorch#77154): wrapping it per
rank makes every rank draw independently, so ranks overlap and the global class mix drifts. Here
every rank computes the *same* global draw for the epoch and keeps the slice ``rank::world``:
shares are disjoint, together they are exactly one weighted sample, and any rank can recompute
its share after a restart from the seed and the epoch alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch.utils.data import Sampler

SamplerKind = Literal["none", "weighted", "oversample"]


class ShardedEpochSampler(Sampler[int]):
    """Draw a global index list per epoch, then yield this rank's disjoint share of it.

    ``kind``: ``none`` a permutation; ``weighted`` ``num_samples`` draws with replacement, each
    index with probability proportional to the inverse frequency of its class; ``oversample`` every
    class drawn up to the size of the largest (the largest once each, smaller ones repeated).
    The global list is padded by wrapping so that every rank gets the same number of indices.
    """

    def __init__(
        self,
        labels: Sequence[int],
        kind: SamplerKind = "none",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        num_samples: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.kind = kind
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0
        total = self._global_size(num_samples)
        self.per_rank = -(-total // world_size)

    def _global_size(self, num_samples: int | None) -> int:
        if self.kind == "oversample":
            counts = Counter(self.labels.tolist())
            return max(counts.values()) * len(counts)
        return num_samples if num_samples is not None else len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """Select the draw of ``epoch`` (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint needs to recompute the draw."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`."""
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])

    def class_weights(self) -> torch.Tensor:
        """Per-sample probabilities for ``weighted``: inverse class frequency, normalised."""
        counts = torch.bincount(self.labels).double()
        w = 1.0 / counts[self.labels]
        return w / w.sum()

    def global_indices(self) -> torch.Tensor:
        """The whole epoch's draw, identical on every rank."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.per_rank * self.world_size
        if self.kind == "weighted":
            idx = torch.multinomial(self.class_weights(), total, replacement=True, generator=g)
        elif self.kind == "oversample":
            parts = []
            target = int(torch.bincount(self.labels).max())
            for c in torch.unique(self.labels):
                members = torch.nonzero(self.labels == c).flatten()
                reps = members[torch.randperm(len(members), generator=g)]
                extra = members[torch.randint(len(members), (target - len(members),), generator=g)]
                parts += [reps, extra]
            idx = torch.cat(parts)[torch.randperm(target * len(parts) // 2, generator=g)]
        else:
            idx = torch.randperm(len(self.labels), generator=g)
        if len(idx) < total:  # pad by wrapping so every rank has the same number of steps
            idx = torch.cat([idx, idx[: total - len(idx)]])
        return idx

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_indices()[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank


class EpochTagged(Sampler[tuple[int, int]]):
    """Yield ``(index, epoch)`` so that persistent DataLoader workers know the epoch.

    Workers are forked once and keep a copy of the dataset; an epoch counter set on the dataset
    in the main process would never reach them, but the sampler's output does.
    """

    def __init__(self, sampler: ShardedEpochSampler) -> None:
        self.sampler = sampler
        self._skip = 0

    def start_at(self, items: int) -> None:
        """Leave out the first ``items`` of the next pass (a resume inside an epoch)."""
        self._skip = items

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip, self._skip = self.sampler.epoch, self._skip, 0
        return ((i, epoch) for i in list(self.sampler)[skip:])

    def __len__(self) -> int:
        return len(self.sampler)


def shard(n: int, rank: int, world_size: int) -> list[int]:
    """Unpadded, disjoint evaluation shard: every index exactly once across ranks."""
    return list(range(rank, n, world_size))
