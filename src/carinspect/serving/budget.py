"""A memory budget shared by the requests in flight: bytes are held before they are allocated.

Two of them bound the server's memory by design rather than by luck: the request bodies being
read and held (by declared length) and the image decodes in flight (by the cost
:func:`carinspect.data.decoding.images.decode_cost` works out from each header). A request that needs
more than the whole budget can never be served and is refused at once; one that would have to
wait longer than its patience gets :class:`Full`, which the app answers with 503 and
Retry-After, so a burst of large uploads queues or is shed instead of killing the pod.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator


class Full(Exception):
    """The budget had no room for ``needed`` bytes within the wait allowed."""

    def __init__(self, name: str, needed: int, wait_s: float) -> None:
        super().__init__(
            f"the server is busy: {needed / 2**20:.1f} MiB of {name} memory were not free "
            f"within {wait_s:g} s; retry shortly"
        )
        self.retry_after = max(1, round(wait_s / 2))


class MemoryBudget:
    """``total`` bytes that holders share, granted first come, first served.

    Arrival order, so a large request at the head of the queue is not starved by a stream of
    larger-than-small ones behind it; but a small holder (at most 1/16 of the total: a phone
    photo's reduced decode is a few MiB) is let through whenever the free bytes allow, so
    ordinary photos are not held up behind a burst of huge ones. Release is synchronous: a
    cancelled request (a client gone, a deadline) always gives its bytes back.
    """

    def __init__(self, name: str, total: int) -> None:
        self.name = name
        self.total = total
        self.used = 0
        self.peak = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self, needed: int, wait_s: float) -> AsyncIterator[None]:
        """Hold ``needed`` bytes for the body of the ``async with``; :class:`Full` after ``wait_s``.

        ``needed`` above ``total`` is the caller's to refuse before asking (it would never fit);
        here it is clipped to ``total``.
        """
        needed = min(max(0, needed), self.total)
        small = needed <= self.total // 16
        if (small or not self._waiting) and self.used + needed <= self.total:
            self._take(needed)
        else:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (needed, granted)
            self._waiting.append(entry)
            try:
                async with asyncio.timeout(wait_s):
                    await asyncio.shield(granted)
            except BaseException as err:
                if granted.done():  # granted as the wait ended: give it back
                    self._release(needed)
                else:
                    granted.cancel()
                    self._waiting.remove(entry)
                    self._grant()  # the head may have been this one
                if isinstance(err, TimeoutError):
                    raise Full(self.name, needed, wait_s) from None
                raise
        try:
            yield
        finally:
            self._release(needed)

    def _take(self, needed: int) -> None:
        self.used += needed
        self.peak = max(self.peak, self.used)

    def _release(self, needed: int) -> None:
        self.used -= needed
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.total:
            needed, granted = self._waiting.popleft()
            self._take(needed)
            granted.set_result(None)
