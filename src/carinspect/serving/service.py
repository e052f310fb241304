"""What the routes share: the model store, the batcher, the decoding pool, budgets and metrics.

``Service.predict`` is the whole path of one photo: decode on the decoding pool within the
decode budget, wait for a batch slot, answer, then tell the observers (drift window, feedback
sampling, shadow/canary).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool

from carinspect.data.decoding.images import ImageError, ImageLimits
from carinspect.memory import fixed_mmap_threshold
from carinspect.serving.batcher import Batcher, BatchTiming
from carinspect.serving.budget import MemoryBudget
from carinspect.serving.feedback import FeedbackLog
from carinspect.serving.inference import answer, finish, opened_for
from carinspect.serving.loaded import LoadedModel, PhotoScores
from carinspect.serving.metrics import ServingMetrics
from carinspect.serving.model_store import ModelStore
from carinspect.serving.observers import AnsweredPhoto, DriftObserver, Observer
from carinspect.serving.schemas import AnyPrediction, MultiTaskPrediction, Prediction
from carinspect.serving.second import SecondOpinion
from carinspect.serving.settings import ServeSettings
from carinspect.serving.tracing import Tracing, log_trace_ids
from carinspect.serving.urlfetch import parse_networks
from carinspect.tracking.webhooks import Deliveries

T = TypeVar("T")


# Why an image was refused -> the status that says so.
IMAGE_STATUS = {
    "empty": 400,
    "too_large_file": 413,
    "not_an_image": 415,
    "unsupported_format": 415,
    "pixel_bomb": 422,
    "decode_budget": 422,
    "corrupt": 422,
    "truncated": 422,
    "too_small": 422,
}


class Service:
    """What the routes share: settings, model store, batcher, metrics."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = ServingMetrics()
        self.tracing = Tracing()  # OTEL_* variables: off unless they say where spans go
        self.store = ModelStore(settings, on_reload=self._reloaded)
        # SHADOW / a canary (a rollout in the registry, or CANARY_PERCENT): a second alias's
        # model beside MODEL_URI's; None when neither can happen
        follows = settings.rollout_follow and self.store.ref.alias not in (
            None,
            settings.canary_alias,
        )
        self.second = (
            SecondOpinion(settings, self.metrics)
            if settings.shadow or settings.canary_percent > 0 or follows
            else None
        )
        # FEEDBACK_DIR: a share of the answered photos kept for review; None when unset
        self.feedback = FeedbackLog(settings, self.metrics) if settings.feedback_dir else None
        # told of every answered photo, in this order
        self.observers: list[Observer] = [DriftObserver()]
        self.observers += [o for o in (self.feedback, self.second) if o is not None]
        if self.second is not None and self.feedback is not None:
            self.second.on_disagreement = self.feedback.disagreed
        self.batcher = Batcher(
            settings.max_batch_size, settings.max_wait_ms, self.metrics.observe_batch
        )
        # every decode's memory is worked out from its header and held here before the pixels
        # are allocated: the decodes in flight never need more than DECODE_MEMORY_MB together
        self.decode_memory = MemoryBudget("decode", int(settings.decode_memory_mb * 2**20))
        self.body_memory = MemoryBudget("request body", int(settings.body_memory_mb * 2**20))
        self.limits = ImageLimits(
            max_pixels=settings.max_pixels,
            max_bytes=settings.max_upload_bytes,
            max_decode_bytes=self.decode_memory.total,
        )
        self.allowed_networks = parse_networks(settings.url_fetch_allow_cidrs)
        # Decoding is most of the CPU work per request (a phone photo's JPEG decode dwarfs the
        # model). A pool the size of the machine, first come first served, instead of the
        # default thread pool's 40 threads sharing the cores: no more decodes in flight than
        # cores, so requests finish in arrival order and the tail stays close to the median.
        self._decoder = ThreadPoolExecutor(
            max_workers=settings.decoders,
            thread_name_prefix="decode",
            initializer=_lower_priority,
            initargs=(settings.decode_nice,),
        )
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.deliveries = Deliveries()  # webhook deliveries seen: a replay is refused

    def _reloaded(self, model: LoadedModel | None, error: str | None) -> None:
        if model is not None:
            self.metrics.reloads.inc()
            self.metrics.serving(
                model.ref.name, model.version, model.ref.alias, model.provider, model.precision
            )
            self.metrics.side_ready("champion", model.version)
        if error is not None:
            self.metrics.reload_failures.inc()

    async def start(self) -> None:
        """Start the batcher, load the model (a failure leaves the server up, not ready), poll."""
        # a decode's blocks go back to the system when it ends, whichever thread runs the next
        # one: without this, two decoding threads each kept the last large decode (+145 MiB
        # instead of +68 for four of the worst decodable uploads, benchmarks/hostile_uploads.py)
        fixed_mmap_threshold()
        log_trace_ids()
        await self.batcher.start()
        await run_in_threadpool(self.store.refresh)
        _settle_heap()
        self._poller = threading.Thread(
            target=self.store.poll, args=(self._stop,), name="model-poll", daemon=True
        )
        self._poller.start()
        if self.feedback is not None:
            await run_in_threadpool(self.feedback.start)
        if self.second is not None:
            await run_in_threadpool(self.second.store.refresh)
            threading.Thread(
                target=self.second.store.poll, args=(self._stop,), name="second-poll", daemon=True
            ).start()

    async def stop(self) -> None:
        """Stop polling and batching."""
        self._stop.set()
        if self.second is not None:
            await self.second.drain()
        await self.batcher.stop()
        if self.feedback is not None:
            await run_in_threadpool(self.feedback.stop)
        self._decoder.shutdown(wait=False, cancel_futures=True)
        await run_in_threadpool(self.tracing.shutdown)

    def model(self) -> LoadedModel:
        """The model serving now, or 503."""
        model = self.store.current
        if model is None:
            raise HTTPException(503, f"no model loaded yet: {self.store.not_ready_reason()}")
        return model

    async def predict(
        self, data: bytes, filename: str | None, client: str | None = None, explain: bool = False
    ) -> AnyPrediction:
        """Decode and preprocess off the event loop, then wait for a batch slot.

        ``client`` (the request's client key) picks the canary's side when CANARY_PERCENT is on.
        ``explain``: each answer gets the heatmap of its label (422 for a model without maps).
        """
        started = time.perf_counter()
        model = self.model()
        canary = self.second.canary(client) if self.second is not None else None
        model = canary or model
        side = "canary" if canary is not None else "champion"
        if explain and model.unexplained is not None:
            raise HTTPException(422, f"explain=true: {model.unexplained}")
        timing = BatchTiming()
        with self.batcher.incoming():  # the collector waits for this image while it decodes
            pixels, stats, size = await self._pixels(data, model, filename)
            queued = time.perf_counter()
            future = self.batcher.enqueue(pixels, model, timing, explain)
        try:
            scores = await future
            reply = answer(model, scores, size if explain else None)
        except Exception as err:  # the batcher logged the traceback once for the whole batch
            self.metrics.answers.labels(side, model.version or "", "error").inc()
            raise HTTPException(
                500,
                f"{filename or 'upload'}: version {model.version or model.ref.uri} failed to "
                f"answer ({type(err).__name__}); the server log has the error",
            ) from err
        seconds = time.perf_counter() - started
        ms = seconds * 1000
        self.metrics.answered(side, model.version, reply.labels, seconds)

        async def rerun(other: LoadedModel) -> PhotoScores:
            same = other.spec == model.spec
            return await self.batcher.submit(
                pixels if same else (await self._pixels(data, other, filename))[0], other
            )

        self.tracing.steps(started, queued, timing, side, model.version)
        photo = AnsweredPhoto(data, filename, model, scores, stats, reply, rerun)
        for observer in self.observers:
            observer.observe(photo)
        self.tracing.event("hand-off")
        kind = MultiTaskPrediction if model.multitask else Prediction
        return kind(**reply.body, processing_ms=round(ms, 3), filename=filename)

    async def _pixels(
        self, data: bytes, model: LoadedModel, filename: str | None
    ) -> tuple[Any, dict[str, float] | None, tuple[int, int]]:
        """The upload preprocessed for ``model``, its drift statistics and its size as served.

        The statistics only if the model keeps any; the size is (width, height) with the EXIF
        orientation applied. Computed on the decoding pool, off the event loop.
        """
        try:
            opened = await self._in_pool(opened_for, data, model, self.limits)
            async with self.decode_memory.hold(opened.cost, self.settings.queue_wait_s):
                pixels, stats = await self._in_pool(finish, opened, model)
                return pixels, stats, (opened.width, opened.height)
        except ImageError as err:
            status = IMAGE_STATUS.get(err.reason, 422)
            raise HTTPException(status, f"{filename or 'upload'}: {err}") from err

    async def _in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the decoding pool; a cancelled request still waits for it to end.

        So the memory a decode holds is given back only once the decode is over, whatever
        happened to the request (a client gone, a deadline).
        """
        job = asyncio.get_running_loop().run_in_executor(self._decoder, fn, *args)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait([job])
            raise


def _settle_heap() -> None:
    """Move everything start-up built out of the garbage collector's sight (``gc.freeze``).

    A full collection walks every tracked object: about 100,000 after the imports, 60 ms of
    one core on a 2-vCPU node, with the GIL held. Requests promote enough short-lived objects
    to start one every ten seconds or so under load, and each one stalls every request in
    flight for that long. Frozen objects are never walked again, so a full collection only
    sees what was allocated since (2 ms instead of 60 under the phone-photo benchmark). Image
    plugins are loaded first (Pillow imports them at the first upload) so they are frozen too.
    """
    Image.init()
    gc.collect()
    gc.freeze()


def _lower_priority(nice: int) -> None:
    """Run the calling (decoding) thread at a lower CPU priority than inference and HTTP.

    Work is taken in the order closest to done: a batch waiting for onnxruntime or a response
    waiting to be written goes before the next upload's decode. Otherwise, under saturation,
    decodes crowd out inference, batches grow into waves and the tail grows with them.
    Linux applies nice per thread; elsewhere this does nothing.
    """
    if nice and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


async def service_of(request: Request) -> Service:
    """The app's Service (a dependency, and what the upload routes call themselves)."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(service_of)]
