"""API keys: ``Authorization: Bearer <key>`` on the predict routes when API_KEYS is set.

The key is declared as HTTP bearer security, so Swagger UI's Authorize button sends it. The
upload routes (``EndpointOnly``) run no dependencies: they call ``check_key`` themselves and name
the same requirement (``BEARER``) for the OpenAPI document.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from carinspect.serving.service import Service, service_of

BEARER_HELP = "One of API_KEYS (only when the server sets API_KEYS)"
BEARER: dict[str, Any] = {"security": [{"HTTPBearer": []}]}
_bearer = HTTPBearer(auto_error=False, description=BEARER_HELP)


def check_key(service: Service, authorization: str | None) -> None:
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
    service: Annotated[Service, Depends(service_of)],
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The dependency form of ``check_key``, declared as HTTP bearer security."""
    check_key(service, request.headers.get("authorization"))


AUTH = [Depends(_authorized)]


def declare_bearer(app: FastAPI) -> None:
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
