"""How errors reach a client: one JSON ``detail`` line and the status that says what went wrong.

Never a 500 for bad input: refused images, invalid fields, full budgets (503 + Retry-After) and
a client gone before its answer (499, for /metrics) each have their own answer.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from carinspect.errors import InputError
from carinspect.serving.budget import Full
from carinspect.serving.schemas import ErrorResponse

logger = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # nginx's status for a client that went before its answer
# the error answers every route may give, for the OpenAPI document
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 408, 413, 415, 422, 500, 503)
}


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    return JSONResponse({"detail": str(err.detail)}, err.status_code, headers=err.headers)


async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    parts = [
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
        for e in err.errors()
    ]
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, 422)


async def _full(request: Request, err: Full) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, 503, {"Retry-After": str(err.retry_after)})


async def _gone(request: Request, err: ClientDisconnect) -> Response:
    # nobody reads this answer: the status is for /metrics, where a 500 would page someone
    logger.info("%s %s: the client closed the connection before the request was read",
                request.method, request.url.path)  # fmt: skip
    return Response(status_code=CLIENT_CLOSED)


async def _bad_input(request: Request, err: InputError) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, getattr(err, "status", 400))


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(Full, _full)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, _gone)  # type: ignore[arg-type]
    app.add_exception_handler(InputError, _bad_input)  # type: ignore[arg-type]
