"""Prometheus metrics of the rollout service (listed in docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RolloutMetrics:
    """Prometheus metrics of the rollout service (listed in docs/metrics.md)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.samples = Counter("halo_rollout_samples_total", "Completions generated", ["backend", "via"],
                               registry=registry)
        self.tokens = Counter("halo_rollout_tokens_total", "Completion tokens generated", ["backend"], registry=registry)
        self.generate_seconds = Histogram(
            "halo_rollout_generate_seconds", "Wall time of one generate call (model load excluded)", ["backend"],
            registry=registry, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )
        self.model_loads = Counter("halo_rollout_model_loads_total", "Models loaded or re-read from disk",
                                   ["backend", "action"], registry=registry)
        self.load_seconds = Histogram("halo_rollout_load_seconds", "Time to load a model or update its weights",
                                      ["backend"], registry=registry, buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.models_loaded = Gauge("halo_rollout_models_loaded", "Models held in the rollout cache", registry=registry)
