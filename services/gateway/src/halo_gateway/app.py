"""FastAPI application factory.

Routes live in ``halo_gateway.routes.<area>`` modules, each exposing ``router``; every such
module is included, so an area adds its routes without touching this file. Routes stay thin:
parse, one bus request (via :func:`get_bus`), map. Errors are mapped once, here, to
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import importlib
import pkgutil
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from halo_bus import Bus
from halo_common.errors import BadRequest, HaloError
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from halo_gateway import __version__, routes
from halo_gateway.settings import GatewaySettings

_tracer = trace.get_tracer("halo_gateway")


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

    @app.middleware("http")
    async def trace_and_auth(request: Request, call_next):  # noqa: ANN001, ANN202
        if settings.token and request.url.path.startswith(("/api", "/v1")):
            auth = request.headers.get("authorization", "")
            if not secrets.compare_digest(auth, f"Bearer {settings.token}"):
                err = HaloError("missing or invalid bearer token")
                err.code, err.type = 401, "authentication_error"  # type: ignore[misc]
                return error_response(err)
        token = otel_context.attach(propagate.extract(dict(request.headers)))
        try:
            route = request.scope.get("route")
            name = f"{request.method} {getattr(route, 'path', request.url.path)}"
            with _tracer.start_as_current_span(name, kind=SpanKind.SERVER) as span:
                span.set_attribute("http.request.method", request.method)
                span.set_attribute("url.path", request.url.path)
                response = await call_next(request)
                span.set_attribute("http.response.status_code", response.status_code)
                return response
        finally:
            otel_context.detach(token)

    for mod in pkgutil.iter_modules(routes.__path__):
        module = importlib.import_module(f"{routes.__name__}.{mod.name}")
        if hasattr(module, "router"):
            app.include_router(module.router)
    return app
