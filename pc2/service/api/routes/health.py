"""Liveness, readiness and Prometheus metrics (no API key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from pc2.service.api.deps import SettingsDep
from pc2.service.core import queue
from pc2.service.core.db import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(settings: SettingsDep) -> JSONResponse:
    """The database and the broker answer."""
    checks: dict[str, str] = {}
    for name, probe in (("database", lambda: ping(settings.database_url)),
                        ("broker", lambda: queue.ping_broker(settings))):
        try:
            await run_in_threadpool(probe)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ok else "not ready", **checks},
                        status_code=status.HTTP_200_OK if ok else status.HTTP_503_SERVICE_UNAVAILABLE)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus text format: jobs by status, task durations, request latency."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
