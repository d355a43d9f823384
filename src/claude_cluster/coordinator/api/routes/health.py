"""``/health`` and ``/metrics``: for load balancers and Prometheus. ``/health`` is open;
``/metrics`` is open unless ``METRICS_TOKEN`` is set."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from claude_cluster import __version__, metrics
from claude_cluster.coordinator.api.deps import CoordinatorDep, Credentials
from claude_cluster.coordinator.service import tokens_equal
from claude_cluster.errors import Unauthorized

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(coordinator: CoordinatorDep) -> JSONResponse:
    """Checks the database, and Redis when configured: 503 when either is down."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(coordinator.repo.ping(), timeout=5)
        checks["database"] = "ok"
        metrics.DB_UP.set(1)
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
        metrics.DB_UP.set(0)
    if coordinator.settings.redis_url:
        try:
            await asyncio.wait_for(coordinator.bus.ping(), timeout=5)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "healthy" if healthy else "unhealthy", "version": __version__, "checks": checks},
        status_code=200 if healthy else 503,
    )


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(coordinator: CoordinatorDep, credentials: Credentials) -> Response:
    """Prometheus text; with ``METRICS_TOKEN`` set, only for that bearer token."""
    required = coordinator.settings.metrics_token
    if required is not None and required.get_secret_value():
        given = credentials.credentials if credentials else ""
        if not tokens_equal(given, required.get_secret_value()):
            raise Unauthorized("/metrics needs the METRICS_TOKEN bearer token")
    await coordinator.reconciler.update_gauges()
    return Response(generate_latest(metrics.COORDINATOR), media_type=CONTENT_TYPE_LATEST)
