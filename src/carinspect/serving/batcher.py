"""Dynamic batching: requests wait up to MAX_WAIT_MS to share one onnxruntime call.

Each queued item is an already preprocessed image and the model it was preprocessed for (two
versions may differ in input size). The collector takes the first waiting item, then whatever
arrives within ``max_wait_ms`` up to ``max_batch`` items, but it only waits while more images
are known to be on their way (accepted and still being decoded, see :meth:`Batcher.incoming`):
a lone request runs at once instead of paying the wait. The batch runs in a worker thread,
so the event loop never blocks on inference: requests keep being accepted, decoded and queued
while a batch runs, and the next batch starts with everything that queued meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from carinspect.serving.loaded import LoadedModel, PhotoScores, Scores

logger = logging.getLogger(__name__)


@dataclass
class BatchTiming:
    """When an image's batch started and ended (perf_counter seconds), and its size.

    A trace's queue-wait and inference spans are made of it.
    """

    started: float = 0.0
    ended: float = 0.0
    size: int = 0


@dataclass
class _Item:
    pixels: np.ndarray
    model: LoadedModel
    future: asyncio.Future[PhotoScores]
    queued_at: float
    timing: BatchTiming | None = None
    explain: bool = False


class Batcher:
    """Collects single images into batches and runs them on their model."""

    def __init__(
        self,
        max_batch: int,
        max_wait_ms: float,
        observe: Callable[[int, list[float], float], None] | None = None,
    ) -> None:
        """``observe(batch size, queue seconds per item, inference seconds)`` feeds metrics."""
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._observe = observe
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ort")
        self._coming = 0  # images accepted and being decoded: they will be submitted soon

    async def start(self) -> None:
        """Start collecting (call from the running event loop)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._collect(), name="batcher")

    async def stop(self) -> None:
        """Stop collecting; waiting requests get an error."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(RuntimeError("server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Announce an image that is being decoded, so the collector waits for it."""
        self._coming += 1
        try:
            yield
        finally:
            self._coming -= 1

    def enqueue(
        self,
        pixels: np.ndarray,
        model: LoadedModel,
        timing: BatchTiming | None = None,
        explain: bool = False,
    ) -> asyncio.Future[PhotoScores]:
        """Queue one preprocessed image (3, H, W); the future resolves to its scores.

        ``timing``, when given, is filled in with its batch's start, end and size. ``explain``:
        its batch fetches the class activation maps too (for every photo in it).
        """
        if self._queue is None:
            raise RuntimeError("batcher is not running")
        future: asyncio.Future[PhotoScores] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(pixels, model, future, time.perf_counter(), timing, explain))
        return future

    async def submit(self, pixels: np.ndarray, model: LoadedModel) -> PhotoScores:
        """The scores of one preprocessed image (3, H, W)."""
        return await self.enqueue(pixels, model)

    async def _collect(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or self._coming == 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            by_model: dict[int, list[_Item]] = {}
            for item in batch:
                by_model.setdefault(id(item.model), []).append(item)
            for items in by_model.values():
                await self._run(items)

    async def _run(self, items: list[_Item]) -> None:
        live = [i for i in items if not i.future.cancelled()]
        if not live:
            return
        started = time.perf_counter()
        waits = [started - i.queued_at for i in live]
        model, explain = live[0].model, any(i.explain for i in live)

        def infer() -> Scores:  # the stack copies megabytes: keep it off the event loop too
            return model.infer(np.stack([i.pixels for i in live]), explain)

        try:
            scores = await asyncio.get_running_loop().run_in_executor(self._executor, infer)
        except Exception as err:  # onnxruntime errors go to the requests, not the collector
            logger.exception("inference failed for a batch of %d", len(live))
            for item in live:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        ended = time.perf_counter()
        for item in live:
            if item.timing is not None:
                item.timing.started, item.timing.ended, item.timing.size = started, ended, len(live)
        if self._observe is not None:
            self._observe(len(live), waits, ended - started)
        for item, photo in zip(live, scores, strict=True):
            if not item.future.done():
                item.future.set_result(photo)
