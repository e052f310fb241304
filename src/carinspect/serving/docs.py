"""/docs and /redoc with no internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they are blank in the air-gapped or
proxied clusters this service runs in. Here the same pages load the assets shipped in the pinned
``fastapi-offline`` package (Swagger UI 5, ReDoc 2, served from ``/docs-assets``); only its files
are used, not its FastAPI subclass.

The upload routes describe their request bodies themselves (``uploads.upload_body``), in the
form Swagger UI shows file pickers for.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"


def assets_dir() -> Path:
    """The folder of Swagger UI / ReDoc files installed with fastapi-offline."""
    return Path(str(resources.files("fastapi_offline") / "static"))


def install_docs(app: FastAPI) -> None:
    """Serve /docs, /docs/oauth2-redirect and /redoc from local assets.

    The app must be created with ``docs_url=None, redoc_url=None``.
    """
    folder = assets_dir()
    if not (folder / "swagger-ui-bundle.js").is_file():
        raise RuntimeError(f"{folder}: Swagger UI assets missing (is fastapi-offline installed?)")
    app.mount(ASSETS_URL, StaticFiles(directory=folder), name="docs-assets")
    title = app.title
    favicon = f"{ASSETS_URL}/favicon.png"
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=favicon,
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )
