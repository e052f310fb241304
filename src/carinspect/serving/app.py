"""The FastAPI application: routes, auth, error mapping, and the model store's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from PIL import Image
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from carinspect.data.images import ImageError, ImageLimits
from carinspect.errors import InputError
from carinspect.memory import fixed_mmap_threshold
from carinspect.serving.batcher import Batcher
from carinspect.serving.budget import Full, MemoryBudget
from carinspect.serving.docs import install_docs
from carinspect.serving.feedback import FeedbackLog
from carinspect.serving.inference import answer, finish, opened_for, thresholds_of
from carinspect.serving.limits import BodyLimit, Deadlines, RequestMetrics
from carinspect.serving.metrics import ServingMetrics
from carinspect.serving.model_store import LoadedModel, ModelStore
from carinspect.serving.observers import AnsweredPhoto, DriftObserver, Observer
from carinspect.serving.schemas import (
    AnyPrediction,
    BatchItemError,
    BatchPrediction,
    ErrorResponse,
    Health,
    ModelStatus,
    MultiTaskPrediction,
    Prediction,
    SecondStatus,
    UrlRequest,
)
from carinspect.serving.second import CLIENT_HEADERS, SecondOpinion
from carinspect.serving.settings import ServeSettings
from carinspect.serving.uploads import EndpointOnly, files_in, upload_body
from carinspect.serving.urlfetch import UrlFetchError, fetch, parse_networks
from carinspect.tracking.webhooks import Deliveries, WebhookError, verify

logger = logging.getLogger(__name__)
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
CLIENT_CLOSED = 499  # nginx's status for a client that went before its answer
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 408, 413, 415, 422, 503)
}


class Service:
    """What the routes share: settings, model store, batcher, metrics."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = ServingMetrics()
        self.store = ModelStore(settings, on_reload=self._reloaded)
        # SHADOW / CANARY_PERCENT: a second alias's model beside MODEL_URI's; None when unset
        self.second = (
            SecondOpinion(settings, self.metrics)
            if settings.shadow or settings.canary_percent > 0
            else None
        )
        # FEEDBACK_DIR: a share of the answered photos kept for review; None when unset
        self.feedback = FeedbackLog(settings, self.metrics) if settings.feedback_dir else None
        # told of every answered photo, in this order
        self.observers: list[Observer] = [DriftObserver()]
        self.observers += [o for o in (self.feedback, self.second) if o is not None]
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
            self.metrics.serving(model.ref.name, model.version, model.ref.alias, model.provider)
        if error is not None:
            self.metrics.reload_failures.inc()

    async def start(self) -> None:
        """Start the batcher, load the model (a failure leaves the server up, not ready), poll."""
        # a decode's blocks go back to the system when it ends, whichever thread runs the next
        # one: without this, two decoding threads each kept the last large decode (+145 MiB
        # instead of +68 for four of the worst decodable uploads, benchmarks/hostile_uploads.py)
        fixed_mmap_threshold()
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

    def model(self) -> LoadedModel:
        """The model serving now, or 503."""
        model = self.store.current
        if model is None:
            raise HTTPException(503, f"no model loaded yet: {self.store.not_ready_reason()}")
        return model

    async def predict(
        self, data: bytes, filename: str | None, client: str | None = None
    ) -> AnyPrediction:
        """Decode and preprocess off the event loop, then wait for a batch slot.

        ``client`` (the request's client key) picks the canary's side when CANARY_PERCENT is on.
        """
        started = time.perf_counter()
        model = self.model()
        if self.second is not None:
            model = self.second.canary(client) or model
        with self.batcher.incoming():  # the collector waits for this image while it decodes
            pixels, stats = await self._pixels(data, model, filename)
            future = self.batcher.enqueue(pixels, model)
        probs = await future
        ms = (time.perf_counter() - started) * 1000
        reply = answer(model, probs)

        async def rerun(other: LoadedModel) -> Any:
            same = other.spec == model.spec
            return await self.batcher.submit(
                pixels if same else (await self._pixels(data, other, filename))[0], other
            )

        photo = AnsweredPhoto(data, filename, model, probs, stats, reply, rerun)
        for observer in self.observers:
            observer.observe(photo)
        kind = MultiTaskPrediction if model.multitask else Prediction
        return kind(**reply.body, processing_ms=round(ms, 3), filename=filename)

    async def _pixels(
        self, data: bytes, model: LoadedModel, filename: str | None
    ) -> tuple[Any, dict[str, float] | None]:
        """The upload preprocessed for ``model``, and its drift statistics if the model keeps any.

        Both are computed on the decoding pool, off the event loop.
        """
        try:
            opened = await self._in_pool(opened_for, data, model, self.limits)
            async with self.decode_memory.hold(opened.cost, self.settings.queue_wait_s):
                return await self._in_pool(finish, opened, model)
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


def _json(answer: BaseModel) -> Response:
    """A response model as JSON, serialized once by pydantic.

    Returning a ``Response`` skips FastAPI's second validation of a model the route built
    itself; ``response_model`` still documents it.
    """
    return Response(answer.model_dump_json(), media_type="application/json")


def _thresholds(model: LoadedModel | None) -> dict[str, Any]:
    """/model's thresholds: the rule's, or each task's by name."""
    if model is None:
        return {}
    if model.multitask:
        return {t.name: thresholds_of(t.decision) for t in model.tasks}
    return thresholds_of(model.decision)


def _second_status(second: SecondOpinion | None) -> SecondStatus | None:
    if second is None:
        return None
    store, m = second.store, second.store.current
    return SecondStatus(
        mode=second.mode, alias=second.alias, uri=store.ref.uri,
        version=m.version if m else None, canary_percent=second.percent,
        loaded_at=m.loaded_at if m else None, reloads=store.reloads,
        reload_failures=store.failures, last_reload_error=store.last_error,
        waiting_for=store.waiting_for,
    )  # fmt: skip


def _client_key(request: Request) -> str | None:
    """Who is asking, for the canary's side: X-Client-Key, X-Request-Id, or the address."""
    for header in CLIENT_HEADERS:
        if value := request.headers.get(header):
            return value
    return request.client.host if request.client else None


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


async def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


BEARER_HELP = "One of API_KEYS (only when the server sets API_KEYS)"
_bearer = HTTPBearer(auto_error=False, description=BEARER_HELP)


def _check_key(service: Service, authorization: str | None) -> None:
    """With API_KEYS set, ``authorization`` must be ``Bearer <one of them>``, else 401."""
    keys = service.settings.keys()
    if not keys:
        return
    scheme, token = get_authorization_scheme_param(authorization)
    token = token.strip() if scheme.lower() == "bearer" else ""
    ok = False
    for key in keys:  # compare with every key: the time taken does not depend on which matched
        ok |= hmac.compare_digest(token.encode(), key.encode())
    if not ok:
        raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})


async def _authorized(
    request: Request,
    service: Annotated[Service, Depends(_service)],
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Predict routes need ``Authorization: Bearer <key>`` when API_KEYS is set.

    Declared as HTTP bearer security, so Swagger UI's Authorize button sends the key.
    """
    _check_key(service, request.headers.get("authorization"))


# The upload routes (EndpointOnly) do not run dependencies: they call _check_key themselves, and
# declare the same security requirement for the OpenAPI document.
BEARER: dict[str, Any] = {"security": [{"HTTPBearer": []}]}


ServiceDep = Annotated[Service, Depends(_service)]
Auth = [Depends(_authorized)]


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The serving app; settings from the environment unless given."""
    settings = settings or ServeSettings()
    service = Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="carinspect",
        description="Vehicle photo classifier served from the MLflow registry (alias "
        f"{service.store.ref.alias or '-'}).",
        version="1",
        lifespan=lifespan,
        responses=ERRORS,
        docs_url=None,  # install_docs: the same pages, from local assets instead of a CDN
        redoc_url=None,
    )
    app.state.service = service
    install_docs(app)
    app.add_middleware(
        BodyLimit,
        default_limit=settings.max_upload_bytes + 64 * 1024,
        limits={"/predict/batch": settings.max_batch_bytes + 64 * 1024,
                "/predict/url": 64 * 1024, "/webhooks/mlflow": 256 * 1024},
        budget=service.body_memory,
        wait_s=settings.queue_wait_s,
        deadlines=Deadlines(settings.body_timeout_s, settings.request_timeout_s),
    )  # fmt: skip
    app.add_middleware(RequestMetrics, metrics=service.metrics)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(err.detail)}, err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in err.errors()
        ]
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, 422)

    @app.exception_handler(Full)
    async def _full(request: Request, err: Full) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 503, {"Retry-After": str(err.retry_after)})

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, err: ClientDisconnect) -> Response:
        # nobody reads this answer: the status is for /metrics, where a 500 would page someone
        logger.info("%s %s: the client closed the connection before the request was read",
                    request.method, request.url.path)  # fmt: skip
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(InputError)
    async def _bad_input(request: Request, err: InputError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, getattr(err, "status", 400))

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    async def readyz(service: ServiceDep) -> Any:
        """Readiness: a model is loaded and warmed up."""
        if service.store.current is None:
            detail = service.store.not_ready_reason()
            return JSONResponse(Health(status="not ready", detail=detail).model_dump(), 503)
        return Health(status="ready")

    @app.get("/model", response_model=ModelStatus, tags=["health"])
    async def model_status(service: ServiceDep) -> ModelStatus:
        """The model serving now, its thresholds and provider, and the last reload error."""
        store, m = service.store, service.store.current
        return ModelStatus(
            ready=m is not None,
            uri=store.ref.uri,
            name=store.ref.name,
            version=m.version if m else None,
            alias=store.ref.alias,
            classes=m.classes if m else [],
            thresholds=_thresholds(m),
            tasks={t.name: t.classes for t in m.tasks} if m and m.multitask else None,
            preprocess=m.spec.to_dict() if m else {},
            mc_samples=m.mc.samples if m and m.mc else 0,
            execution_provider=m.provider if m else None,
            providers=m.providers if m else [],
            loaded_at=m.loaded_at if m else None,
            reloads=store.reloads,
            reload_failures=store.failures,
            last_reload_error=store.last_error,
            last_reload_error_at=store.last_error_at,
            waiting_for=store.waiting_for,
            registry_reachable=store.registry_reachable,
            registry_error=store.registry_error,
            second=_second_status(service.second),
        )

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics(service: ServiceDep) -> Response:
        """Prometheus metrics."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        model = service.store.current
        service.metrics.drift(model.drift if model is not None else None, settings.drift_min_photos)
        service.metrics.registry_state(service.store.registry_reachable)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    uploads = APIRouter(route_class=EndpointOnly, tags=["predict"])

    @uploads.post(
        "/predict", response_model=AnyPrediction, openapi_extra=upload_body("file", many=False) | BEARER
    )  # fmt: skip
    @uploads.post(
        "/predict/file", response_model=AnyPrediction, summary="Predict (the seed API's path)",
        openapi_extra=upload_body("file", many=False) | BEARER,
    )  # fmt: skip
    async def predict(request: Request) -> Response:
        """One image (multipart field ``file``): label, confidence, probabilities.

        A model with several tasks answers each under ``tasks``. ``/predict/file`` is the same
        route under the seed API's path, which existing clients call.
        """
        _check_key(service, request.headers.get("authorization"))
        (part,) = await files_in(request, "file", most=1)
        return _json(await service.predict(part.data, part.filename, _client_key(request)))

    @uploads.post(
        "/predict/batch", response_model=BatchPrediction,
        openapi_extra=upload_body("files", many=True) | BEARER,
    )  # fmt: skip
    async def predict_batch(request: Request) -> Response:
        """Several images (multipart field ``files``, at most MAX_BATCH_FILES), in order.

        A file that cannot be answered gets an entry with its status and why (``errors`` counts
        them); the others are answered.
        """
        started = time.perf_counter()
        _check_key(service, request.headers.get("authorization"))
        files = await files_in(request, "files", most=service.settings.max_batch_files)
        results = await asyncio.gather(
            *(service.predict(f.data, f.filename, _client_key(request)) for f in files),
            return_exceptions=True,
        )
        answers: list[Prediction | MultiTaskPrediction | BatchItemError] = []
        for f, result in zip(files, results, strict=True):
            if isinstance(result, HTTPException):  # this file's own 4xx/503: an entry of its own
                answers.append(BatchItemError(filename=f.filename, status=result.status_code,
                                              detail=str(result.detail)))  # fmt: skip
            elif isinstance(result, Full):
                answers.append(BatchItemError(filename=f.filename, status=503, detail=str(result)))
            elif isinstance(result, BaseException):
                raise result
            else:
                answers.append(result)
        ms = (time.perf_counter() - started) * 1000
        errors = sum(isinstance(a, BatchItemError) for a in answers)
        return _json(
            BatchPrediction(predictions=answers, errors=errors, processing_ms=round(ms, 3))
        )

    app.include_router(uploads)

    # routes that are off on this server are left out of /docs (they answer 403/404 if called)
    @app.post(
        "/predict/url", response_model=AnyPrediction, dependencies=Auth, tags=["predict"],
        include_in_schema=settings.allow_url_fetch,
    )  # fmt: skip
    async def predict_url(service: ServiceDep, body: UrlRequest, request: Request) -> AnyPrediction:
        """An image fetched from a public http(s) URL (only when ALLOW_URL_FETCH is on)."""
        if not service.settings.allow_url_fetch:
            raise HTTPException(403, "URL fetching is disabled on this server (ALLOW_URL_FETCH)")
        try:
            data = await fetch(
                body.url,
                timeout_s=service.settings.url_fetch_timeout_s,
                max_bytes=service.settings.max_upload_bytes,
                allowed=service.allowed_networks,
            )
        except UrlFetchError as err:
            raise HTTPException(err.status, str(err)) from err
        return await service.predict(data, body.url, _client_key(request))

    @app.post(
        "/webhooks/mlflow", status_code=202, response_model=Health, tags=["registry"],
        include_in_schema=settings.webhook_secret is not None,
    )  # fmt: skip
    async def mlflow_webhook(request: Request, service: ServiceDep) -> Health:
        """MLflow alias events (HMAC-signed): reload now instead of at the next poll."""
        secret = service.settings.webhook_secret
        if secret is None:
            raise HTTPException(404, "webhooks are not enabled (CARINSPECT_WEBHOOK_SECRET)")
        body = await request.body()
        try:
            payload = verify(secret.get_secret_value(), dict(request.headers), body)
            service.deliveries.accept(dict(request.headers))
        except WebhookError as err:
            raise HTTPException(401, str(err)) from err
        data = payload.get("data") or {}
        ref = service.store.ref
        if data.get("name") == ref.name and data.get("alias") == ref.alias:
            asyncio.get_running_loop().run_in_executor(None, service.store.refresh)
            return Health(status="accepted", detail=f"reloading {ref.uri}")
        second = service.second
        if (
            second is not None
            and data.get("name") == ref.name
            and data.get("alias") == second.alias
        ):
            asyncio.get_running_loop().run_in_executor(None, second.store.refresh)
            return Health(status="accepted", detail=f"reloading {second.store.ref.uri}")
        return Health(status="ignored", detail="not the alias this server follows")

    _declare_bearer(app)
    return app


def _declare_bearer(app: FastAPI) -> None:
    """Keep the bearer scheme in the OpenAPI components whatever routes are on.

    FastAPI adds it for a route with the HTTPBearer dependency; the upload routes only name it
    (BEARER), and /predict/url, which has the dependency, is left out of the document when URL
    fetching is off: the upload routes would then refer to a scheme the document lacks.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes.setdefault(
            "HTTPBearer", {"type": "http", "scheme": "bearer", "description": BEARER_HELP}
        )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
