"""Prometheus metrics of the eval service (listed in docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class EvalMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Counter("halo_eval_jobs_total", "Eval jobs finished", ["job_type", "state"], registry=registry)
        self.job_seconds = Histogram("halo_eval_job_seconds", "Wall time of one eval job", ["job_type"],
                                     registry=registry, buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200))
        self.results = Counter("halo_eval_results_total", "Task x metric results produced", ["job_type"],
                               registry=registry)
        self.samples_verified = Counter("halo_eval_passk_samples_total", "pass@k samples verified",
                                        ["stage"], registry=registry)
        self.regressions = Counter("halo_eval_probe_regressions_total", "Probes that found a regression",
                                   registry=registry)
