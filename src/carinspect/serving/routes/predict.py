"""The predict routes: one upload, a batch of uploads, and a photo fetched from a URL.

The upload routes are ``EndpointOnly`` (see serving/uploads.py): they take the ``Request``,
check the key, read the form and return their ``Response`` themselves.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel

from carinspect.serving.auth import AUTH, BEARER, check_key
from carinspect.serving.budget import Full
from carinspect.serving.schemas import (
    AnyPrediction,
    BatchItemError,
    BatchPrediction,
    MultiTaskPrediction,
    Prediction,
    UrlRequest,
)
from carinspect.serving.second import CLIENT_HEADERS
from carinspect.serving.service import ServiceDep, service_of
from carinspect.serving.uploads import EndpointOnly, files_in, upload_body
from carinspect.serving.urlfetch import UrlFetchError, fetch

uploads = APIRouter(route_class=EndpointOnly, tags=["predict"])
EXPLAIN = {"parameters": [{
    "name": "explain", "in": "query", "required": False, "schema": {"type": "boolean"},
    "description": "each answer gets a heatmap of where the model found its label (a model "
    "without class activation maps answers 422, naming why)",
}]}  # fmt: skip
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def _explain(request: Request) -> bool:
    """The ``explain`` query parameter; anything but a boolean is a 422 naming it."""
    value = request.query_params.get("explain", "false").strip().lower()
    if value not in TRUE + FALSE:
        raise HTTPException(422, f"explain={value!r}: expected true or false")
    return value in TRUE


@uploads.post(
    "/predict", response_model=AnyPrediction,
    openapi_extra=upload_body("file", many=False) | BEARER | EXPLAIN,
)  # fmt: skip
@uploads.post(
    "/predict/file", response_model=AnyPrediction, summary="Predict (the seed API's path)",
    openapi_extra=upload_body("file", many=False) | BEARER | EXPLAIN,
)  # fmt: skip
async def predict(request: Request) -> Response:
    """One image (multipart field ``file``): label, confidence, probabilities.

    A model with several tasks answers each under ``tasks``. ``/predict/file`` is the same
    route under the seed API's path, which existing clients call.
    """
    service = await service_of(request)
    check_key(service, request.headers.get("authorization"))
    explain = _explain(request)
    (part,) = await files_in(request, "file", most=1)
    return _json(await service.predict(part.data, part.filename, _client_key(request), explain))


@uploads.post(
    "/predict/batch", response_model=BatchPrediction,
    openapi_extra=upload_body("files", many=True) | BEARER | EXPLAIN,
)  # fmt: skip
async def predict_batch(request: Request) -> Response:
    """Several images (multipart field ``files``, at most MAX_BATCH_FILES), in order.

    A file that cannot be answered gets an entry with its status and why (``errors`` counts
    them); the others are answered.
    """
    started = time.perf_counter()
    service = await service_of(request)
    check_key(service, request.headers.get("authorization"))
    explain = _explain(request)
    files = await files_in(request, "files", most=service.settings.max_batch_files)
    results = await asyncio.gather(
        *(service.predict(f.data, f.filename, _client_key(request), explain) for f in files),
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
    return _json(BatchPrediction(predictions=answers, errors=errors, processing_ms=round(ms, 3)))


by_url = APIRouter(tags=["predict"])


@by_url.post("/predict/url", response_model=AnyPrediction, dependencies=AUTH)
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


def _json(answer: BaseModel) -> Response:
    """A response model as JSON, serialized once by pydantic.

    Returning a ``Response`` skips FastAPI's second validation of a model the route built
    itself; ``response_model`` still documents it.
    """
    return Response(answer.model_dump_json(), media_type="application/json")


def _client_key(request: Request) -> str | None:
    """Who is asking, for the canary's side: X-Client-Key, X-Request-Id, or the address."""
    for header in CLIENT_HEADERS:
        if value := request.headers.get(header):
            return value
    return request.client.host if request.client else None
