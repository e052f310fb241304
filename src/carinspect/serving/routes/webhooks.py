"""MLflow's alias and rollout events: reload now instead of at the next poll."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request

from carinspect.contracts.rollout import TAG
from carinspect.serving.schemas import Health
from carinspect.serving.service import ServiceDep
from carinspect.tracking.webhooks import WebhookError, verify

router = APIRouter(tags=["registry"])


@router.post("/webhooks/mlflow", status_code=202, response_model=Health)
async def mlflow_webhook(request: Request, service: ServiceDep) -> Health:
    """MLflow alias and rollout events (HMAC-signed): reload now instead of at the next poll."""
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
        and (data.get("alias") == second.alias or data.get("key") == TAG)
    ):
        asyncio.get_running_loop().run_in_executor(None, second.store.refresh)
        return Health(status="accepted", detail=f"reloading {second.store.ref.uri}")
    return Health(status="ignored", detail="not an alias or rollout this server follows")
