"""W3C trace context across bus hops: inject into outgoing headers, extract in handlers.

Uses the global OpenTelemetry propagator and tracer provider, so it is a no-op until
``halo_telemetry.setup()`` installs an SDK, and spans across a hop share one trace once it has.

Usage (both return context managers; with tracing off they are one shared no-op)::

    with client_span("rpc", subject) as trace_headers:   # {} when tracing is off
        ...
    with server_span("rpc", subject, headers):
        ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import ProxyTracerProvider, SpanKind

_tracer = trace.get_tracer("halo_bus")
# get_tracer_provider() loads a provider named by this variable when none was set in code; it is
# read once here (a process's environment is set before it starts), not on every message.
_ENV_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_on = False  # once an SDK provider is installed it stays (OpenTelemetry sets the global only once)

# Shared no-op context managers for the tracing-off path: no generator, no span, no dict per message.
_NO_HEADERS: AbstractContextManager[dict[str, str]] = contextlib.nullcontext({})
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()


def tracing_enabled() -> bool:
    """True once a real (SDK) tracer provider is installed. Until then every span would be a
    no-op, so the hot path skips span and header work entirely (it dominates bus overhead)."""
    global _on
    if _on:
        return True
    # Cheap negative answer for the common case (no provider set in code or by env): reading the
    # module global avoids get_tracer_provider()'s environment lookup on every message.
    if not _ENV_PROVIDER and getattr(trace, "_TRACER_PROVIDER", False) is None:
        return False
    provider = trace.get_tracer_provider()
    _on = not isinstance(provider, (ProxyTracerProvider, trace.NoOpTracerProvider))
    return _on


def inject(headers: dict[str, str]) -> dict[str, str]:
    propagate.inject(headers)
    return headers


def client_span(kind: str, subject: str) -> AbstractContextManager[dict[str, str]]:
    """Span ``"<kind> <subject>"`` for an outgoing request (``kind="rpc"``) or publish
    (``kind="publish"``); yields headers carrying its traceparent — a shared empty dict when
    tracing is off, so callers must copy it before adding to it."""
    if not tracing_enabled():
        return _NO_HEADERS
    return _client_span(kind, subject)


def server_span(kind: str, subject: str, headers: dict[str, str] | None) -> AbstractContextManager[None]:
    """Span ``"<kind> <subject>"`` for handling a message (``kind`` ``"rpc"`` or ``"consume"``),
    parented to the sender's context from ``headers``."""
    if not tracing_enabled():
        return _NOTHING
    return _server_span(kind, subject, headers)


@contextmanager
def _client_span(kind: str, subject: str) -> Iterator[dict[str, str]]:
    span_kind = SpanKind.PRODUCER if kind == "publish" else SpanKind.CLIENT
    with _tracer.start_as_current_span(f"{kind} {subject}", kind=span_kind) as span:
        span.set_attribute("messaging.system", "nats")
        span.set_attribute("messaging.destination.name", subject)
        yield inject({})


@contextmanager
def _server_span(kind: str, subject: str, headers: dict[str, str] | None) -> Iterator[None]:
    ctx = propagate.extract(headers or {})
    token = otel_context.attach(ctx)
    try:
        span_kind = SpanKind.CONSUMER if kind == "consume" else SpanKind.SERVER
        with _tracer.start_as_current_span(f"{kind} {subject}", kind=span_kind) as span:
            span.set_attribute("messaging.system", "nats")
            span.set_attribute("messaging.destination.name", subject)
            yield
    finally:
        otel_context.detach(token)
