"""W3C trace context across bus hops: inject into outgoing headers, extract in handlers.

Uses the global OpenTelemetry propagator and tracer provider, so it is a no-op until
``halo_telemetry.setup()`` installs an SDK, and spans across a hop share one trace once it has.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import ProxyTracerProvider, SpanKind

_tracer = trace.get_tracer("halo_bus")


def tracing_enabled() -> bool:
    """True once a real (SDK) tracer provider is installed. Until then every span would be a
    no-op, so the hot path skips span and header work entirely (it dominates bus overhead)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (ProxyTracerProvider, trace.NoOpTracerProvider))


def inject(headers: dict[str, str]) -> dict[str, str]:
    propagate.inject(headers)
    return headers


@contextmanager
def client_span(name: str, subject: str) -> Iterator[dict[str, str]]:
    """Span for an outgoing request/publish; yields headers carrying its traceparent."""
    if not tracing_enabled():
        yield {}
        return
    with _tracer.start_as_current_span(name, kind=SpanKind.PRODUCER if name.startswith("publish") else SpanKind.CLIENT) as span:
        span.set_attribute("messaging.system", "nats")
        span.set_attribute("messaging.destination.name", subject)
        yield inject({})


@contextmanager
def server_span(name: str, subject: str, headers: dict[str, str] | None) -> Iterator[None]:
    """Span for handling a message, parented to the sender's context from ``headers``."""
    if not tracing_enabled():
        yield
        return
    ctx = propagate.extract(headers or {})
    token = otel_context.attach(ctx)
    try:
        kind = SpanKind.CONSUMER if name.startswith("consume") else SpanKind.SERVER
        with _tracer.start_as_current_span(name, kind=kind) as span:
            span.set_attribute("messaging.system", "nats")
            span.set_attribute("messaging.destination.name", subject)
            yield
    finally:
        otel_context.detach(token)
