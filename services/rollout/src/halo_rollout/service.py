"""The rollout service: ``halo.rpc.rollout.generate`` / ``.load`` and the ``halo.job.rollout.generate`` queue.

All model work (loading, sampling, weight updates) runs on one dedicated thread, so the event loop
keeps answering health checks and job heartbeats while a batch decodes, and requests never race
a weight update: a result's ``weights_version`` is always the version that produced it.

Run it with ``python -m halo_rollout``; in tests::

    svc = Rollout(RolloutSettings(default_model=str(tiny_model_dir)), InMemoryBus())
    await svc.start()
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from halo_bus import Bus, subjects
from halo_runtime import Service
from halo_sampling.backends import make_backend, resolve_backend
from halo_sampling.backends.base import RolloutBackend
from halo_schemas.jobs import JobEnvelope
from halo_schemas.rollout import RolloutLoadRequest, RolloutRequest
from halo_telemetry import Telemetry
from prometheus_client import CollectorRegistry

from halo_rollout import __version__, handlers
from halo_rollout.core.cache import ModelCache
from halo_rollout.metrics import RolloutMetrics
from halo_rollout.settings import RolloutSettings

T = TypeVar("T")


class Rollout(Service):
    name = "rollout"
    version = __version__
    description = "Batched sampling of N completions per prompt (transformers, vLLM, MLX)"
    settings_cls = RolloutSettings

    def __init__(self, settings: RolloutSettings, bus: Bus, telemetry: Telemetry | None = None) -> None:
        super().__init__(settings, bus, telemetry)
        self.settings: RolloutSettings = settings
        self.metrics = RolloutMetrics(telemetry.registry if telemetry else CollectorRegistry())
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-model")
        self.cache = ModelCache(settings.cache_size, self._make_backend)
        # Set on shutdown: a running job stops after its current chunk (its message, left unacked,
        # is redelivered and resumed by another worker from the lines already written).
        self.stopping_jobs = threading.Event()

    def _make_backend(self, name: str) -> RolloutBackend:
        s = self.settings
        options: dict[str, Any] = {}
        if name == "transformers":
            options = {"device": s.device, "dtype": None if s.dtype == "auto" else s.dtype}
        elif name == "vllm":
            options = {"gpu_memory_utilization": s.gpu_memory_utilization}
        return make_backend(name, max_batch_size=s.max_batch_size, **options)

    def backend_for(self, requested: str) -> str:
        """The concrete backend for a request's ``backend`` field (``auto`` -> the service setting, resolved)."""
        return resolve_backend(self.settings.backend if requested == "auto" else requested)

    async def setup(self) -> None:
        await self.endpoint("generate", functools.partial(handlers.generate, self), RolloutRequest)
        await self.endpoint("load", functools.partial(handlers.load, self), RolloutLoadRequest)
        await self.track(await self.bus.consume_jobs(
            subjects.ROLLOUT_JOB,
            subjects.job_consumer_name("rollout", "generate"),
            functools.partial(handlers.run_job, self),
            JobEnvelope,
            ack_wait_s=self.settings.job_ack_wait_s,
            max_deliver=self.settings.job_max_deliver,
        ))

    async def in_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model thread (the only thread that touches models)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def health(self, req: Any) -> Any:
        reply = await super().health(req)
        return reply.model_copy(update={"details": {"models": self.cache.labels(),
                                                    "default_backend": self.backend_for("auto")}})

    async def drain(self) -> None:
        # In-flight batches finish on the model thread (a job stops at its next chunk); then the
        # models are freed.
        self.stopping_jobs.set()
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)
        self.cache.close()
