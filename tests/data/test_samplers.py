from collections import Counter

import pytest

from carinspect.data.loading.samplers import ShardedEpochSampler, shard

LABELS = [0] * 900 + [1] * 100  # 9:1 imbalance


def draws(kind: str, world: int, seed: int = 0, epoch: int = 0) -> list[list[int]]:
    out = []
    for rank in range(world):
        s = ShardedEpochSampler(LABELS, kind, rank, world, seed)  # type: ignore[arg-type]
        s.set_epoch(epoch)
        out.append(list(s))
    return out


@pytest.mark.parametrize("kind", ["none", "weighted", "oversample"])
def test_ranks_get_disjoint_shares_of_one_draw(kind: str) -> None:
    per_rank = draws(kind, world=4)
    single = draws(kind, world=1)[0]
    assert len({len(p) for p in per_rank}) == 1
    combined = [i for pos in range(len(per_rank[0])) for i in (p[pos] for p in per_rank)]
    assert combined[: len(single)] == single[: len(combined)]  # rank r takes positions r::world
    positions = [set(range(r, len(combined), 4)) for r in range(4)]
    assert all(a.isdisjoint(b) for i, a in enumerate(positions) for b in positions[i + 1 :])


def test_none_is_a_permutation() -> None:
    (only,) = draws("none", world=1)
    assert sorted(only) == list(range(len(LABELS)))
    shares = draws("none", world=3)
    flat = [i for share in shares for i in share]
    assert set(flat) == set(range(len(LABELS)))  # padding only repeats, never drops


def test_weighted_balances_classes() -> None:
    counts = Counter(LABELS[i] for share in draws("weighted", world=2, epoch=3) for i in share)
    assert abs(counts[1] / sum(counts.values()) - 0.5) < 0.05


def test_oversample_repeats_minority_only() -> None:
    (only,) = draws("oversample", world=1)
    counts = Counter(LABELS[i] for i in only)
    assert counts == {0: 900, 1: 900}
    assert len({i for i in only if LABELS[i] == 0}) == 900  # every majority image exactly once


def test_same_seed_same_draw_and_epochs_differ() -> None:
    assert draws("weighted", 2, seed=5, epoch=1) == draws("weighted", 2, seed=5, epoch=1)
    assert draws("weighted", 2, seed=5, epoch=1) != draws("weighted", 2, seed=5, epoch=2)
    assert draws("weighted", 2, seed=5, epoch=1) != draws("weighted", 2, seed=6, epoch=1)


def test_state_round_trip() -> None:
    a = ShardedEpochSampler(LABELS, "weighted", 1, 2, seed=3)
    a.set_epoch(7)
    b = ShardedEpochSampler(LABELS, "weighted", 1, 2, seed=0)
    b.load_state_dict(a.state_dict())
    assert list(a) == list(b)


def test_eval_shard_covers_each_index_once() -> None:
    parts = [shard(10, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(10))
    with pytest.raises(ValueError):
        ShardedEpochSampler(LABELS, "none", 2, 2)
