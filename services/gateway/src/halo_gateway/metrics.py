"""Prometheus metrics of the gateway (docs/metrics.md, gateway section): HTTP requests by route template
(``/api/v1/runs/{run_id}``, never the raw path, so ids do not explode the label set) and status."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("halo_http_requests_total", "HTTP requests answered by the gateway",
                                ["method", "route", "status"], registry=registry)
        self.duration = Histogram("halo_http_request_duration_seconds",
                                  "Time to the response head (a stream's body may last longer)", ["method", "route"],
                                  registry=registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)
