"""Per-request span and HTTP metrics for the gateway, as a pure ASGI middleware.

Pure ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` copies every
body chunk of a streamed response through an extra in-memory channel and task switch, which made the
gateway hop cost a quarter of a tiny model's token rate on ``/v1`` streams. This one only watches the
``http.response.start`` message go by; body chunks are passed straight through.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from halo_gateway.metrics import HttpMetrics

_tracer = trace.get_tracer("halo_gateway")


class TraceMiddleware:
    """Opens a server span per HTTP request (parented to an incoming ``traceparent``) and records
    the request in :class:`HttpMetrics` when the response head is sent, labelled by the route
    template (``unmatched`` when no route took it). An exception before the head counts as 500."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        token = otel_context.attach(propagate.extract(carrier))
        method, path = scope["method"], scope["path"]
        start = time.perf_counter()
        head_sent = False
        try:
            with _tracer.start_as_current_span(f"{method} {path}", kind=SpanKind.SERVER) as span:
                span.set_attribute("http.request.method", method)
                span.set_attribute("url.path", path)

                async def send_watching_head(message: Message) -> None:
                    nonlocal head_sent
                    if message["type"] == "http.response.start":
                        head_sent = True
                        self._observe(scope, span, message["status"], start)
                    await send(message)

                try:
                    await self.app(scope, receive, send_watching_head)
                except BaseException:
                    if not head_sent:
                        self._observe(scope, span, 500, start)
                    raise
        finally:
            otel_context.detach(token)

    def _observe(self, scope: Scope, span: Any, status: int, start: float) -> None:
        span.set_attribute("http.response.status_code", status)
        # The route is known only after routing: label by its template, or "unmatched".
        template = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.observe(scope["method"], template, status, time.perf_counter() - start)
