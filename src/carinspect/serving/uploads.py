"""File uploads for the predict routes: read the form, refuse bad ones, describe it in OpenAPI.

Nearly every request to the service is an upload, and on a CPU node each costs the event loop
CPU that decoding and inference cannot use: with FastAPI's ``UploadFile`` and dependencies, about
1 ms of the ~15 ms a 2000x1500 phone photo costs in all. So the upload routes are ``EndpointOnly``:
FastAPI documents them from their declaration as usual, but calls the endpoint with the
``Request`` alone (no dependency injection, form parsing or response validation), and the
endpoint checks the key, calls ``files_in`` and returns its ``Response`` itself.

What a client sees is unchanged: the same multipart fields, the same ``body.<field>: Field
required`` answer when the field is missing, and the same request body in the OpenAPI document
(from ``upload_body``), so Swagger UI still shows file pickers.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from carinspect.serving import multipart
from carinspect.serving.multipart import MultipartError, NotMultipart, Part

_FILE = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}


class EndpointOnly(APIRoute):
    """A route whose endpoint takes the ``Request`` and returns a ``Response``, nothing between.

    The declaration (``response_model``, ``openapi_extra``) still makes the OpenAPI operation.
    The endpoint must do what FastAPI would have: check credentials, parse, build the response.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The endpoint itself, instead of FastAPI's request handler around it."""
        return self.endpoint


def upload_body(field: str, *, many: bool) -> dict[str, Any]:
    """``openapi_extra`` for a route that takes one file (or several) in multipart ``field``.

    OpenAPI 3.1 describes a file as ``contentMediaType: application/octet-stream``, which is all
    FastAPI writes. Swagger UI renders that as a file picker for a single field but as text
    boxes for an array of files (swagger-api/swagger-ui#10825), and the browser then posts
    strings. ``format: binary`` (the 3.0 way, still a valid 3.1 annotation) beside it gives
    file pickers in both cases.
    """
    schema = {"type": "array", "items": _FILE} if many else _FILE
    form = {
        "type": "object",
        "properties": {field: {**schema, "title": field.capitalize()}},
        "required": [field],
    }
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}}}


async def _body(request: Request) -> bytearray:
    """The request body in one buffer that nothing else keeps.

    ``Request.body()`` joins the chunks into a second copy and caches it on the request for the
    request's life; the parts cut from this buffer are the only copy left once it is dropped.
    A client that goes mid-body raises ``ClientDisconnect`` (answered as 499 by the app).
    """
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    return body


async def files_in(request: Request, field: str, *, most: int) -> list[Part]:
    """The parts named ``field`` (at least one, at most ``most``), or an HTTP error saying why."""
    content_type = request.headers.get("content-type")
    try:
        boundary = multipart.boundary_of(content_type)  # before reading a body that is no form
        parts = multipart.parts(await _body(request), boundary)
    except NotMultipart as err:
        raise HTTPException(
            422, f"body.{field}: Field required ({err}: send the image as form field {field!r})"
        ) from err
    except MultipartError as err:
        raise HTTPException(400, f"multipart body: {err}") from err
    found = [p for p in parts if p.name == field]
    if not found:
        others = ", ".join(sorted({p.name for p in parts})) or "none"
        raise HTTPException(422, f"body.{field}: Field required (the form has: {others})")
    if len(found) > most:
        if most == 1:
            raise HTTPException(
                422, f"body.{field}: {len(found)} files; send several to /predict/batch"
            )
        raise HTTPException(413, f"{len(found)} files: at most {most} per request")
    return found
