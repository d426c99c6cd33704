"""FastAPI application factory. ``create_app(settings)`` is what uvicorn and the tests serve."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import anyio

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pc2.models.config import ConfigError
from pc2.models.errors import InputError
from pc2.service import crud
from pc2.service.api.main import api_router
from pc2.service.api.routes import health
from pc2.service.core.config import Settings, get_settings
from pc2.service.metrics import ServiceMetrics
from pc2.service.uploads import BadUpload, UploadTooLarge


@asynccontextmanager
async def _lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
    # Handlers that touch the database run in threads. A few threads per core keep every core busy;
    # many more only queue on the GIL and the connection pool and raise tail latency.
    anyio.to_thread.current_default_thread_limiter().total_tokens = app.state.settings.API_THREADS
    yield


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app over ``settings`` (default: ``get_settings()``, read from the environment)."""
    resolved = settings or get_settings()
    app = FastAPI(title="PC² Curate", version="0.1.0", lifespan=_lifespan,
                  description="Clean noisy image–text pair corpora: confidence, clean/noisy labels and "
                              "pseudo-captions for every pair.")
    app.state.settings = resolved
    app.state.metrics = ServiceMetrics(resolved.database_url)
    app.include_router(api_router)
    app.include_router(health.router)
    _add_error_handlers(app)

    app.add_middleware(_TimingMiddleware, metrics=app.state.metrics)
    return app


class _TimingMiddleware:
    """Request latency by method, route and status (plain ASGI: no per-request task switch)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe(scope["method"], _route_label(scope), status, started)


def _route_label(scope: Scope) -> str:
    """The path with its parameters put back as ``{name}``, so ids do not explode the label set."""
    if scope.get("route") is None:
        return "unmatched"
    path = scope["path"]
    for name, value in (scope.get("path_params") or {}).items():
        path = path.replace(f"/{value}", f"/{{{name}}}", 1)
    return path


def _error(status: int, detail: object) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InputError)
    async def _input(_req: Request, exc: InputError) -> JSONResponse:
        return _error(422, {"error": exc.kind, **exc.to_dict()})

    @app.exception_handler(ConfigError)
    async def _config(_req: Request, exc: ConfigError) -> JSONResponse:
        return _error(422, {"error": "config", "key": exc.key, "message": str(exc)})

    @app.exception_handler(crud.BadRequest)
    async def _bad(_req: Request, exc: crud.BadRequest) -> JSONResponse:
        return _error(422, {"error": "request", "field": exc.field, "message": exc.message})

    @app.exception_handler(BadUpload)
    async def _bad_upload(_req: Request, exc: BadUpload) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(UploadTooLarge)
    async def _too_large(_req: Request, exc: UploadTooLarge) -> JSONResponse:
        return _error(413, {"error": "too_large", "limit_bytes": exc.limit, "message": str(exc)})

    @app.exception_handler(crud.NotFound)
    async def _missing(_req: Request, exc: crud.NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(crud.Conflict)
    async def _conflict(_req: Request, exc: crud.Conflict) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(crud.Forbidden)
    async def _forbidden(_req: Request, exc: crud.Forbidden) -> JSONResponse:
        return _error(403, str(exc))


def app_from_env() -> FastAPI:
    """Entry point for ``uvicorn --factory pc2.service.main:app_from_env``."""
    return create_app()
