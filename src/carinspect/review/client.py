"""A small client of Label Studio's REST API: what `carinspect review` needs, nothing more.

Label Studio 1.20+ authenticates with personal access tokens (PATs, the default; its legacy
tokens are off for new organizations). A PAT is a JWT refresh token: each command trades it for
a short-lived access token at ``/api/token/refresh`` and sends ``Authorization: Bearer``; the
access token is refreshed once when the server says it expired. A legacy token (40 hex digits)
is sent as ``Authorization: Token`` and works where an administrator turned legacy tokens on
(Organization > Settings > Access Token Settings).

Every failure is one :class:`ReviewError` that names the server's URL: unreachable, a token it
refuses, or the request it turned down with its own words.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx

from carinspect.errors import InputError

logger = logging.getLogger(__name__)

PAGE = 100  # tasks per page when listing


class ReviewError(InputError):
    """Label Studio cannot be reached, refuses the token, or refuses a request."""


class LabelStudio:
    """One Label Studio server, authenticated with a personal access token (or a legacy one)."""

    def __init__(self, url: str, token: str, timeout_s: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ReviewError(f"--url {url!r}: expected the Label Studio server's http(s) URL")
        if not token:
            raise ReviewError(
                f"{url}: no token (--token or LABEL_STUDIO_API_KEY: a personal access token from "
                "Account & Settings)"
            )
        self.url = url.rstrip("/")
        self._token = token
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s)
        self._auth: dict[str, str] | None = None

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """``method path`` as JSON; the parsed answer (None when empty)."""
        response = self._send(method, path, **kwargs)
        if response.status_code == 401 and self._is_pat():  # the access token expired: once more
            self._auth = None
            response = self._send(method, path, **kwargs)
        if response.status_code in (401, 403):
            raise ReviewError(f"{self.url}: the token was refused ({_detail(response)})")
        if response.status_code >= 400:
            raise ReviewError(
                f"{self.url}: {method} {path} was refused: {response.status_code} "
                f"{_detail(response)}"
            )
        return response.json() if response.content else None

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._authorization(), **kwargs.pop("headers", {})}
        try:
            return self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as err:
            raise ReviewError(f"{self.url}: Label Studio is not reachable ({err})") from None

    def _is_pat(self) -> bool:
        return self._token.count(".") == 2  # a JWT: header.payload.signature

    def _authorization(self) -> dict[str, str]:
        if self._auth is None:
            if not self._is_pat():
                self._auth = {"Authorization": f"Token {self._token}"}
            else:
                try:
                    r = self._http.post("/api/token/refresh", json={"refresh": self._token})
                except httpx.HTTPError as err:
                    raise ReviewError(
                        f"{self.url}: Label Studio is not reachable ({err})"
                    ) from None
                if r.status_code != 200:
                    raise ReviewError(
                        f"{self.url}: the personal access token was refused ({_detail(r)})"
                    )
                self._auth = {"Authorization": f"Bearer {r.json()['access']}"}
        return self._auth

    # -- what review needs ------------------------------------------------------------------

    def project(self, title: str) -> dict[str, Any] | None:
        """The project titled ``title``, or None."""
        found = self.request("GET", "/api/projects", params={"title": title, "page_size": 1000})
        return next((p for p in found.get("results", []) if p.get("title") == title), None)

    def create_project(self, title: str, label_config: str, description: str) -> dict[str, Any]:
        """A new project; tasks are shown in the order they were imported."""
        body = {"title": title, "label_config": label_config, "description": description,
                "sampling": "Sequential sampling"}  # fmt: skip
        project: dict[str, Any] = self.request("POST", "/api/projects", json=body)
        return project

    def update_config(self, project: int, label_config: str) -> None:
        """Replace the project's labelling config (Label Studio refuses one its labels break)."""
        self.request("PATCH", f"/api/projects/{project}", json={"label_config": label_config})

    def storages(self, kind: str, project: int) -> list[dict[str, Any]]:
        """The project's import storages of ``kind`` (``localfiles`` or ``s3``)."""
        found: list[dict[str, Any]] = self.request(
            "GET", f"/api/storages/{kind}", params={"project": project}
        )
        return found

    def add_storage(self, kind: str, body: dict[str, Any]) -> None:
        """Connect an import storage (it is never synced: the tasks are imported one by one)."""
        self.request("POST", f"/api/storages/{kind}", json=body)

    def tasks(self, project: int) -> Iterator[dict[str, Any]]:
        """Every task of the project, with its data."""
        page = 1
        while True:
            found = self.request(
                "GET", "/api/tasks", params={"project": project, "page": page, "page_size": PAGE}
            )
            yield from found["tasks"]
            if page * PAGE >= found["total"]:
                return
            page += 1

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> int:
        """Add ``tasks`` (data and predictions) to the project; how many were added."""
        if not tasks:
            return 0
        done = self.request("POST", f"/api/projects/{project}/import", json=tasks)
        return int(done["task_count"])

    def export(self, project: int) -> list[dict[str, Any]]:
        """Every task with its annotations (Label Studio's JSON export)."""
        found: list[dict[str, Any]] = self.request(
            "GET", f"/api/projects/{project}/export", params={"exportType": "JSON"}
        )
        return found


def _detail(response: httpx.Response) -> str:
    """Label Studio's own words for a refusal (its ``detail`` and validation errors)."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    words = str(body.get("detail") or body.get("message") or f"HTTP {response.status_code}")
    errors = body.get("validation_errors")
    return f"{words}: {errors}" if errors else words
