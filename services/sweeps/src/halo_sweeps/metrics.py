"""Prometheus metrics of sweeps (listed in docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SweepsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("halo_sweeps_requests_total", "Requests handled by sweeps", ["verb"],
                                registry=registry)
        self.trials = Counter("halo_sweeps_trials_total", "Sweep trials that ended, by outcome", ["outcome"],
                              registry=registry)
        self.running = Gauge("halo_sweeps_coordinators_running", "Sweeps coordinated by this process now",
                             registry=registry)
