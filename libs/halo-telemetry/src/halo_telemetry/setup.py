"""Process telemetry setup. Metric names follow docs/dev/conventions.md (``halo_`` prefix, base units)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from halo_telemetry.samplers import sample_all


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, msg, trace_id (when in a span)."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = f"{ctx.trace_id:032x}"
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


@dataclass
class Telemetry:
    """Handles returned by :func:`setup`: register service metrics on ``registry``."""

    service: str
    registry: CollectorRegistry
    tracer: trace.Tracer
    metrics_url: str | None = None
    _server: Any = field(default=None, repr=False)

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        provider = trace.get_tracer_provider()
        if hasattr(provider, "shutdown"):
            provider.shutdown()


_provider_lock = threading.Lock()


def install_tracer_provider(service: str, exporter: SpanExporter | None = None) -> TracerProvider | None:
    """Install (once) a global tracer provider for ``service``. With ``exporter`` (tests pass an
    in-memory one) spans go there; else to OTLP/HTTP if ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set;
    with neither, nothing is installed (returns None) and tracing costs nothing."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    with _provider_lock:
        current = trace.get_tracer_provider()
        if exporter is None and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") and not isinstance(current, TracerProvider):
            # Nothing would receive spans: keep the no-op provider so the bus skips trace work.
            return None
        provider = current if isinstance(current, TracerProvider) else TracerProvider(
            resource=Resource.create({"service.name": service})
        )
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        if provider is not current:
            trace.set_tracer_provider(provider)
        return provider


def _accelerator_gauges(registry: CollectorRegistry) -> None:
    """Gauges read on every scrape. An unreadable value is absent (never exported as 0)."""

    class _Collector:
        def collect(self):  # noqa: ANN202 - prometheus collector protocol
            from prometheus_client.core import GaugeMetricFamily

            util = GaugeMetricFamily("halo_accelerator_utilization_ratio", "Device utilisation 0..1", labels=["kind", "device"])
            mem = GaugeMetricFamily("halo_accelerator_memory_used_bytes", "Device memory in use", labels=["kind", "device"])
            power = GaugeMetricFamily("halo_accelerator_power_watts", "Device power draw", labels=["kind", "device"])
            for s in sample_all():
                labels = [s.kind, str(s.device)]
                if s.utilization_ratio is not None:
                    util.add_metric(labels, s.utilization_ratio)
                if s.memory_used_bytes is not None:
                    mem.add_metric(labels, s.memory_used_bytes)
                if s.power_watts is not None:
                    power.add_metric(labels, s.power_watts)
            yield from (util, mem, power)

    registry.register(_Collector())


def setup(
    service: str,
    *,
    level: str = "INFO",
    json_logs: bool = True,
    metrics_port: int | None = 0,
    metrics_host: str = "127.0.0.1",
    span_exporter: SpanExporter | None = None,
) -> Telemetry:
    """Configure logging, metrics and tracing for ``service``.

    ``metrics_port=None`` serves no /metrics (tests); 0 picks a free port (see ``metrics_url``).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if json_logs else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

    registry = CollectorRegistry()
    Gauge("halo_service_start_time_seconds", "Unix time the service started", registry=registry).set(time.time())
    _accelerator_gauges(registry)

    install_tracer_provider(service, span_exporter)
    tele = Telemetry(service=service, registry=registry, tracer=trace.get_tracer(service))
    if metrics_port is not None:
        server, _thread = start_http_server(metrics_port, addr=metrics_host, registry=registry)
        tele._server = server
        tele.metrics_url = f"http://{metrics_host}:{server.server_port}/metrics"
    return tele
