"""FastAPI application factory.

Routes live in ``halo_gateway.routes.<area>`` modules, each exposing ``router``; every such
module is included, so an area adds its routes without touching this file. Routes stay thin:
parse, one bus request (via :func:`get_bus`), map. Errors are mapped once, here, to
``{"error": {"message", "type", "param", "code"}}``.

Who may call is decided in :mod:`halo_gateway.core.security` (Host allow-list, bearer tokens, origins, content
types) before any route runs; CORS is off unless ``HALO_GATEWAY_CORS_ORIGINS`` lists origins. A route that
takes a raw body (not JSON) declares its media types in ``openapi_extra["requestBody"]["content"]`` —
or is listed in :data:`halo_gateway.core.openapi.RAW_BODY_ROUTES` — and the middleware accepts exactly those.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from halo_bus import Bus
from halo_common.errors import BadRequest, HaloError, Internal
from prometheus_client import CollectorRegistry

from halo_gateway import __version__, routes
from halo_gateway.core.openapi import install_openapi
from halo_gateway.core.security import GatewaySecurity, SecurityMiddleware
from halo_gateway.core.tracing import TraceMiddleware
from halo_gateway.metrics import HttpMetrics
from halo_gateway.settings import GatewaySettings

log = logging.getLogger("halo_gateway")


def get_bus(request: Request) -> Bus:
    """Dependency: the gateway's bus connection."""
    return request.app.state.bus


def error_response(exc: HaloError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.code)


def create_app(bus: Bus, settings: GatewaySettings | None = None, registry: CollectorRegistry | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    app = FastAPI(
        title="Halo Forge",
        version=__version__,
        description="Local finetuning workstation API. Errors: {\"error\": {message, type, param, code}}.",
    )
    app.state.bus = bus
    app.state.settings = settings
    app.state.metrics_registry = registry or CollectorRegistry()
    http_metrics = HttpMetrics(app.state.metrics_registry)
    app.state.security = security = GatewaySecurity(settings)
    security.bootstrap()  # exposed with no token anywhere: create one and show it once

    @app.exception_handler(HaloError)
    async def on_halo_error(_req: Request, exc: HaloError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_req: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        msg = "unknown field" if first.get("type") == "extra_forbidden" else first.get("msg", "invalid request")
        param = ".".join(loc) or None
        return error_response(BadRequest(f"{param}: {msg}" if param else msg, param=param))

    @app.exception_handler(Exception)
    async def on_unexpected(req: Request, exc: Exception) -> JSONResponse:
        # A bug still answers in the one error shape (and is logged with its traceback).
        log.error("unhandled error in %s %s", req.method, req.url.path, exc_info=exc)
        return error_response(Internal(f"internal error ({exc.__class__.__name__}); see the gateway log"))

    for mod in pkgutil.iter_modules(routes.__path__):
        module = importlib.import_module(f"{routes.__name__}.{mod.name}")
        if hasattr(module, "router"):
            app.include_router(module.router)
    # Added last = outermost: CORS answers preflights itself, then the security checks, then tracing.
    app.add_middleware(TraceMiddleware, metrics=http_metrics)
    app.add_middleware(SecurityMiddleware, security=security, api=app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "traceparent"])
    install_openapi(app)
    return app
