"""Prometheus metrics every trainer service exports (docs/metrics.md, trainer section)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Meters:
    """A trainer service's job, step, token and checkpoint counters (one set per process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.jobs = Counter("halo_trainer_jobs_total", "Training jobs ended, by outcome", ["method", "outcome"],
                            registry=registry)
        self.running = Gauge("halo_trainer_jobs_running", "Training jobs running in this process", registry=registry)
        self.steps = Counter("halo_trainer_optimizer_steps_total", "Optimizer steps completed", ["method"],
                             registry=registry)
        self.tokens = Counter("halo_trainer_tokens_total", "Non-padding tokens trained", ["method"], registry=registry)
        self.checkpoints = Counter("halo_trainer_checkpoints_total", "Complete checkpoints written", ["method"],
                                   registry=registry)
