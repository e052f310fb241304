"""The FastAPI application: routers, the middleware that bounds a request, errors, lifecycle.

What the routes share is serving/service.py; the routes are in serving/routes/.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from carinspect.serving.auth import declare_bearer
from carinspect.serving.docs import install_docs
from carinspect.serving.errors import ERRORS, install_error_handlers
from carinspect.serving.limits import BodyLimit, Deadlines, RequestMetrics
from carinspect.serving.routes import health, predict, webhooks
from carinspect.serving.service import Service
from carinspect.serving.settings import ServeSettings
from carinspect.serving.tracing import TraceRequests

# the most a body may be beyond its payload (the multipart framing and the form's other fields)
_FRAMING = 64 * 1024


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
        default_limit=settings.max_upload_bytes + _FRAMING,
        limits={"/predict/batch": settings.max_batch_bytes + _FRAMING,
                "/predict/url": 64 * 1024, "/webhooks/mlflow": 256 * 1024},
        budget=service.body_memory,
        wait_s=settings.queue_wait_s,
        deadlines=Deadlines(settings.body_timeout_s, settings.request_timeout_s),
    )  # fmt: skip
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    app.add_middleware(TraceRequests, tracing=service.tracing)  # outermost: the whole request
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(predict.uploads)
    # routes that are off on this server are left out of /docs (they answer 403/404 if called)
    app.include_router(predict.by_url, include_in_schema=settings.allow_url_fetch)
    app.include_router(webhooks.router, include_in_schema=settings.webhook_secret is not None)
    declare_bearer(app)
    return app
