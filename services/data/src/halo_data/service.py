"""The data service: the ``halo.job.data.*`` queues (synthesize, dedup, score, filter, decontaminate, recipe)
and the ``inspect`` / ``cancel`` RPCs.

Steps are CPU work on files under ``HALO_HOME`` (or paths the worker can read): each runs in a thread (fuzzy
dedup fans out to processes), so the event loop keeps heartbeating jobs and answering health checks.

Run it with ``python -m halo_data``; in tests::

    svc = DataService(DataSettings(home=tmp_path), InMemoryBus())
    await svc.start()
"""

from __future__ import annotations

import functools
import threading

from halo_bus import Bus, subjects
from halo_runtime import Service
from halo_runtime.jobs import JobLifecycle
from halo_schemas.data import InspectRequest
from halo_schemas.jobs import JobEnvelope, JobRef
from halo_telemetry import Telemetry
from prometheus_client import CollectorRegistry

from halo_data import __version__, handlers
from halo_data.metrics import DataMetrics
from halo_data.settings import DataSettings


class DataService(Service):
    name = "data"
    version = __version__
    description = "Data pipeline: synthesize, dedup, score, filter, decontaminate, recipes"
    settings_cls = DataSettings

    def __init__(self, settings: DataSettings, bus: Bus, telemetry: Telemetry | None = None) -> None:
        super().__init__(settings, bus, telemetry)
        self.settings: DataSettings = settings
        self.metrics = DataMetrics(telemetry.registry if telemetry else CollectorRegistry())
        self.running: dict[str, JobLifecycle] = {}
        # Set on shutdown: a running step stops at its next batch and is left for redelivery.
        self.stopping = threading.Event()

    async def setup(self) -> None:
        await self.endpoint("inspect", functools.partial(handlers.inspect, self), InspectRequest)
        await self.endpoint("cancel", functools.partial(handlers.cancel, self), JobRef)
        for job_type in subjects.DATA_JOB_TYPES:
            await self.track(await self.bus.consume_jobs(
                subjects.job("data", job_type), subjects.job_consumer_name("data", job_type),
                functools.partial(handlers.run_job, self), JobEnvelope,
                ack_wait_s=self.settings.job_ack_wait_s, max_deliver=self.settings.job_max_deliver,
                concurrency=self.settings.max_concurrent_jobs,
            ))

    async def drain(self) -> None:
        self.stopping.set()
