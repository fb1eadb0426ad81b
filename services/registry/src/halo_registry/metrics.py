"""Prometheus metrics of the registry (listed in docs/metrics.md): ingest throughput and lag, and the runs in
the database by status (counted on each scrape)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from halo_schemas.events import RunEvent
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from halo_registry.core.ingest import IngestStats
from halo_registry.core.store import RegistryStore

_EVENT_LABEL = {"RunStarted": "started", "RunProgressed": "progressed", "RunCheckpointed": "checkpointed",
                "RunArtifactAdded": "artifact-added", "RunFinished": "finished"}


class IngestMetrics:
    """Prometheus metrics of the ingest (listed in docs/metrics.md)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("halo_registry_events_ingested_total", "Run events applied to the database",
                              ["event"], registry=registry)
        self.points = Counter("halo_registry_metric_points_ingested_total", "Metric points written by ingest",
                              registry=registry)
        self.failures = Counter("halo_registry_ingest_failures_total",
                                "Run events given up after repeated failures or undecodable", registry=registry)
        self.batch_seconds = Histogram("halo_registry_ingest_batch_seconds", "Time to apply one batch of events",
                                       registry=registry)
        self.lag = Gauge("halo_registry_ingest_lag_seconds",
                         "Age of the newest applied event when it was applied", registry=registry)

    def observe(self, stats: IngestStats, events: Sequence[RunEvent], seconds: float) -> None:
        for kind, n in stats.by_type.items():
            self.events.labels(_EVENT_LABEL.get(kind, "other")).inc(n)
        self.points.inc(stats.points)
        self.batch_seconds.observe(seconds)
        if events:
            newest = max(e.ts.timestamp() for e in events)
            self.lag.set(max(time.time() - newest, 0.0))


class RunsGauge:
    """``halo_registry_runs{status}``, counted from the database on each scrape."""

    def __init__(self, store: RegistryStore) -> None:
        self.store = store

    def collect(self):  # noqa: ANN201 - prometheus collector protocol
        g = GaugeMetricFamily("halo_registry_runs", "Runs in the registry by status", labels=["status"])
        try:
            for status, n in sorted(self.store.count_by_status().items()):
                g.add_metric([status], n)
        except Exception:  # an unreachable database: absent, never 0
            pass
        yield g
