"""MLflow failures that come from input or state, as one line naming the store and what to do.

The CLI turns these into exit code 2; anything else MLflow raises (a server-side bug, a broken
store) keeps its traceback.
"""

from __future__ import annotations

from typing import Any

# MLflow error codes that mean "the store does not hold what you asked for, or refused you"
_STATE_CODES = {
    "RESOURCE_DOES_NOT_EXIST": "check that MLFLOW_TRACKING_URI points at the store that holds it",
    "NOT_FOUND": "check that MLFLOW_TRACKING_URI points at the store that holds it",
    "ENDPOINT_NOT_FOUND": "check that MLFLOW_TRACKING_URI is an MLflow tracking server",
    "INVALID_PARAMETER_VALUE": "check the name, version or alias given",
    "BAD_REQUEST": "check the name, version or alias given",
    "RESOURCE_ALREADY_EXISTS": "pick another name",
    "INVALID_STATE": "check the object's state in the MLflow UI",
    "PERMISSION_DENIED": "check MLFLOW_TRACKING_USERNAME/PASSWORD or the token's permissions",
    "UNAUTHENTICATED": "set MLFLOW_TRACKING_USERNAME/PASSWORD (or MLFLOW_TRACKING_TOKEN)",
}


def _unreachable(err: BaseException) -> bool:
    """Whether a requests connection failure or timeout is behind ``err``."""
    import requests

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe(err: Exception, tracking_uri: str) -> str | None:
    """One line for an input/state failure of the tracking store, or None for a real bug."""
    from mlflow.exceptions import MlflowException

    if _unreachable(err):
        return (
            f"MLflow tracking server {tracking_uri} is unreachable: start it, or set "
            "MLFLOW_TRACKING_URI to one that answers (MLFLOW_HTTP_REQUEST_MAX_RETRIES and "
            "MLFLOW_HTTP_REQUEST_TIMEOUT bound the wait)"
        )
    if not isinstance(err, MlflowException):
        return None
    hint = _STATE_CODES.get(str(err.error_code))
    if hint is None:
        return None
    message = _first_line(err.message)
    return f"MLflow ({tracking_uri}): {message}; {hint}"


def _first_line(text: Any) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""
