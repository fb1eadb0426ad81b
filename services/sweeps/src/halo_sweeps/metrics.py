"""Prometheus metrics of sweeps (listed in docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SweepsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # RPCs are counted by the runtime (halo_rpc_requests_total{verb}); these are the sweeps' own.
        self.trials = Counter("halo_sweeps_trials_total", "Sweep trials that ended, by outcome", ["outcome"],
                              registry=registry)
        self.running = Gauge("halo_sweeps_coordinators_running", "Sweeps coordinated by this process now",
                             registry=registry)
