"""MLflow webhooks for alias moves and rollouts: registration, and verification of deliveries.

Serving follows ``champion`` (and a rollout's canary share, a version tag) by polling; a webhook
only makes it notice sooner. MLflow signs each
delivery with HMAC-SHA256 over ``<delivery id>.<timestamp>.<body>`` and sends ``v1,<base64>`` in
X-MLflow-Signature. Webhooks are experimental in MLflow and need a SQL backend store; the server
refuses http:// and private addresses unless MLFLOW_WEBHOOK_ALLOWED_SCHEMES and
MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS say otherwise (an in-cluster receiver needs the latter).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from carinspect.errors import InputError

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
# alias moves (the champion, a canary alias) and version tags (a rollout's share, TAG)
EVENTS = ("model_version_alias.created", "model_version_alias.deleted", "model_version_tag.set")
MAX_AGE_S = 300.0  # a delivery signed longer ago (or later) than this is refused


class WebhookError(InputError):
    """A delivery that is not signed by the configured secret, too old, or malformed."""


def create_registry_webhook(client: Any, name: str, url: str, secret: str) -> Any:
    """Ask the MLflow server to POST alias moves and version tags set to ``url``, signed."""
    if not secret:
        raise WebhookError("a webhook needs a secret: deliveries are verified with it")
    return client.create_webhook(
        name=name,
        url=url,
        events=list(EVENTS),
        description="carinspect: an alias moved or a rollout changed",
        secret=secret,
    )


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The X-MLflow-Signature value for a delivery (what MLflow computes)."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, max_age_s: float = MAX_AGE_S
) -> dict[str, Any]:
    """Check a delivery's signature and age; return its JSON payload.

    ``headers`` may be any case (HTTP header names are case-insensitive).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    signature = lower.get(SIGNATURE_HEADER.lower())
    timestamp = lower.get(TIMESTAMP_HEADER.lower())
    delivery = lower.get(DELIVERY_HEADER.lower())
    if not (signature and timestamp and delivery):
        raise WebhookError("webhook delivery without MLflow signature, timestamp or delivery id")
    expected = sign(secret, delivery, timestamp, body)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise WebhookError("webhook signature does not match the configured secret")
    try:
        age = time.time() - int(timestamp)
    except ValueError as err:
        raise WebhookError(f"webhook timestamp {timestamp!r} is not a Unix time") from err
    if abs(age) > max_age_s:
        raise WebhookError(f"webhook delivery is {age:.0f} s old (limit {max_age_s:.0f} s)")
    try:
        payload: dict[str, Any] = json.loads(body)
    except ValueError as err:
        raise WebhookError(f"webhook body is not JSON: {err}") from err
    return payload


class Deliveries:
    """The delivery ids accepted while their signature is still valid: a replay is refused.

    A signed delivery stays valid for ``max_age_s`` either side of its timestamp, so an id is
    remembered for twice that; at most ``most`` ids are kept (the oldest are let go first).
    Only deliveries whose signature verified are recorded, so nobody without the secret can
    fill the log.
    """

    def __init__(self, max_age_s: float = MAX_AGE_S, most: int = 10_000) -> None:
        self.keep_s = 2 * max_age_s
        self.most = most
        self._seen: OrderedDict[str, float] = OrderedDict()

    def accept(self, headers: Mapping[str, str], now: float | None = None) -> None:
        """Record the delivery of ``headers``; :class:`WebhookError` if it came before."""
        now = time.time() if now is None else now
        lower = {k.lower(): v for k, v in headers.items()}
        delivery = lower.get(DELIVERY_HEADER.lower(), "")
        while self._seen and (
            next(iter(self._seen.values())) < now - self.keep_s or len(self._seen) >= self.most
        ):
            self._seen.popitem(last=False)
        if delivery in self._seen:
            raise WebhookError(f"webhook delivery {delivery!r} was already received (a replay)")
        self._seen[delivery] = now
