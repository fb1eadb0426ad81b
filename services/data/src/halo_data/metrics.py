"""Prometheus metrics of the data service (listed in docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class DataMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows_in = Counter("halo_data_rows_read_total", "Rows read by data steps", ["op"], registry=registry)
        self.rows_out = Counter("halo_data_rows_written_total", "Rows written by data steps", ["op"], registry=registry)
        self.dropped = Counter("halo_data_rows_dropped_total", "Rows dropped by data steps, by reason", ["op", "reason"],
                               registry=registry)
        self.jobs = Counter("halo_data_jobs_total", "Data jobs finished, by type and state", ["job_type", "state"],
                            registry=registry)
        self.running = Gauge("halo_data_jobs_running", "Data jobs running on this instance", registry=registry)
