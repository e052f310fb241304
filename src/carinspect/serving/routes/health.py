"""Liveness, readiness, what model is serving, and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from carinspect.serving.inference import thresholds_of
from carinspect.serving.loaded import LoadedModel
from carinspect.serving.schemas import Health, ModelStatus, SecondStatus
from carinspect.serving.second import SecondOpinion
from carinspect.serving.service import ServiceDep

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(service: ServiceDep) -> Any:
    """Readiness: a model is loaded and warmed up."""
    if service.store.current is None:
        detail = service.store.not_ready_reason()
        return JSONResponse(Health(status="not ready", detail=detail).model_dump(), 503)
    return Health(status="ready")


@router.get("/model", response_model=ModelStatus)
async def model_status(service: ServiceDep) -> ModelStatus:
    """The model serving now, its thresholds and provider, and the last reload error."""
    store, m = service.store, service.store.current
    return ModelStatus(
        ready=m is not None,
        uri=store.ref.uri,
        name=store.ref.name,
        version=m.version if m else None,
        alias=store.ref.alias,
        classes=m.classes if m else [],
        thresholds=_thresholds(m),
        tasks={t.name: t.classes for t in m.tasks} if m and m.multitask else None,
        preprocess=m.spec.to_dict() if m else {},
        mc_samples=m.mc.samples if m and m.mc else 0,
        execution_provider=m.provider if m else None,
        precision=m.precision if m else None,
        providers=m.providers if m else [],
        loaded_at=m.loaded_at if m else None,
        reloads=store.reloads,
        reload_failures=store.failures,
        last_reload_error=store.last_error,
        last_reload_error_at=store.last_error_at,
        waiting_for=store.waiting_for,
        registry_reachable=store.registry_reachable,
        registry_error=store.registry_error,
        second=_second_status(service.second),
    )


@router.get("/metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus metrics."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    model = service.store.current
    drift = model.drift if model is not None else None
    service.metrics.drift(drift, service.settings.drift_min_photos)
    service.metrics.registry_state(service.store.registry_reachable)
    service.metrics.model_ready.set(1 if model is not None else 0)
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _thresholds(model: LoadedModel | None) -> dict[str, Any]:
    """/model's thresholds: the rule's, or each task's by name."""
    if model is None:
        return {}
    if model.multitask:
        return {t.name: thresholds_of(t.decision) for t in model.tasks}
    return thresholds_of(model.decision)


def _second_status(second: SecondOpinion | None) -> SecondStatus | None:
    if second is None:
        return None
    store, m = second.store, second.store.current
    return SecondStatus(
        mode=second.mode, alias=second.alias, uri=store.ref.uri,
        version=m.version if m else None, canary_percent=second.percent,
        rollout=second.rollout.describe() if second.rollout else None,
        loaded_at=m.loaded_at if m else None, reloads=store.reloads,
        reload_failures=store.failures, last_reload_error=store.last_error,
        waiting_for=store.waiting_for,
    )  # fmt: skip
