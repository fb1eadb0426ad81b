"""Prometheus metrics of verifier-sandbox (listed in docs/metrics.md)."""

from __future__ import annotations

from halo_schemas.verifiers import VerifyResult, VerifyStage
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def outcome_of(result: VerifyResult) -> str:
    """success | failure (checked, not fully correct) | error (could not check) | unavailable."""
    if result.stage == VerifyStage.UNAVAILABLE or result.error_type in ("unavailable", "sandbox_unavailable"):
        return "unavailable"
    if result.error is not None:
        return "error"
    return "success" if result.success else "failure"


class VerifierMetrics:
    """Executions by verifier and result, execution time, cache hits, sandbox availability."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.executions = Counter("halo_verifier_executions_total", "Verifications by verifier and result",
                                  ["verifier", "result"], registry=registry)
        self.duration = Histogram("halo_verifier_execution_duration_seconds",
                                  "Time to run one verification (cache hits excluded)", ["verifier"],
                                  buckets=DURATION_BUCKETS, registry=registry)
        self.cache_hits = Counter("halo_verifier_cache_hits_total",
                                  "Verifications answered from the result cache or a duplicate in flight",
                                  ["verifier"], registry=registry)
        self.batch_items = Histogram("halo_verifier_batch_items", "Items per verify-batch request",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 10000),
                                     registry=registry)
        self.sandbox_available = Gauge("halo_verifier_sandbox_available",
                                       "1 when a sandbox mechanism is in use (label: mechanism), 0 when none works",
                                       ["mechanism"], registry=registry)

    def observe(self, verifier: str, result: VerifyResult, cached: bool) -> None:
        self.executions.labels(verifier, outcome_of(result)).inc()
        if cached:
            self.cache_hits.labels(verifier).inc()
        else:
            self.duration.labels(verifier).observe(result.duration_s)
