"""One call per process: ``telemetry = halo_telemetry.setup("registry")``.

Gives structured JSON logs, a Prometheus registry served on ``/metrics``, an OpenTelemetry tracer
(exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set) and accelerator samplers.
"""

from halo_telemetry.samplers import AcceleratorSample, sample_all
from halo_telemetry.setup import Telemetry, setup

__all__ = ["AcceleratorSample", "Telemetry", "sample_all", "setup"]
