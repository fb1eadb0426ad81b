"""Prometheus metrics of the serve service (listed in docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServeMetrics:
    """Counters, histograms and gauges; the engine calls :meth:`first_token`, :meth:`step` and
    :meth:`model_loaded`; gauges read the engine when scraped."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("halo_serve_requests_total", "OpenAI API requests", ["endpoint", "status"],
                                registry=registry)
        self.ttft = Histogram("halo_serve_time_to_first_token_seconds", "Request arrival to first generated token",
                              registry=registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.tokens = Counter("halo_serve_generated_tokens_total", "Tokens generated", ["backend"], registry=registry)
        self.tokens_per_second = Gauge("halo_serve_tokens_per_second", "Tokens/s of the last decode step",
                                       ["backend"], registry=registry)
        self.batch_size = Histogram("halo_serve_batch_size", "Sequences per decode step", ["backend"],
                                    registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.model_loads = Counter("halo_serve_model_loads_total", "Models loaded", ["backend"], registry=registry)
        self.load_seconds = Histogram("halo_serve_model_load_seconds", "Time to load a model", ["backend"],
                                      registry=registry, buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.queue_depth = Gauge("halo_serve_queue_depth", "Sequences waiting for a batch slot", registry=registry)
        self.running = Gauge("halo_serve_running_sequences", "Sequences in running batches", registry=registry)
        self.models_loaded = Gauge("halo_serve_models_loaded", "Base models in memory", registry=registry)
        self.memory = Gauge("halo_serve_model_memory_bytes", "Memory the loaded models' weights take",
                            registry=registry)

    def bind(self, stats: Callable[[], dict]) -> None:
        """Read the gauges from ``stats()`` (the engine's snapshot) at scrape time."""
        self.queue_depth.set_function(lambda: stats()["waiting"])
        self.running.set_function(lambda: stats()["running"])
        self.models_loaded.set_function(lambda: len(stats()["loaded"]))
        self.memory.set_function(lambda: stats()["memory_bytes"])

    # ---- engine hooks (engine thread) ----
    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def step(self, backend: str, batch: int, tokens: int, seconds: float) -> None:
        self.batch_size.labels(backend).observe(batch)
        self.tokens.labels(backend).inc(tokens)
        if seconds > 0:
            self.tokens_per_second.labels(backend).set(tokens / seconds)

    def model_loaded(self, backend: str, seconds: float) -> None:
        self.model_loads.labels(backend).inc()
        self.load_seconds.labels(backend).observe(seconds)
