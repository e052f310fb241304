"""Union-find over row indices: near-duplicate clusters and group columns become split units."""

from __future__ import annotations

from collections.abc import Iterable


class DisjointSet:
    """Disjoint-set forest with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self._parent = list(range(n))
        self._size = [1] * n

    def find(self, i: int) -> int:
        """Return the representative of the set holding ``i``."""
        parent = self._parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        """Merge the sets holding ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size[rb]

    def union_all(self, members: Iterable[int]) -> None:
        """Merge every index in ``members`` into one set."""
        it = iter(members)
        first = next(it, None)
        if first is None:
            return
        for m in it:
            self.union(first, m)

    def labels(self) -> list[int]:
        """For each index, the smallest index of its set (stable, order-independent ids)."""
        smallest: dict[int, int] = {}
        roots = [self.find(i) for i in range(len(self._parent))]
        for i, r in enumerate(roots):
            smallest.setdefault(r, i)
        return [smallest[r] for r in roots]
