"""The sweeps service: Optuna sweeps over any training spec. ``python -m halo_sweeps`` runs it.

It serves the sweep RPCs (``halo.rpc.sweeps.*``) and coordinates each sweep as a durable job on
``halo.job.sweeps.sweep``: trials are training jobs on the trainers, Optuna's storage lives next to the
registry's database, so a coordinator killed with kill -9 is redelivered and resumes where it stopped.
In tests::

    svc = Sweeps(SweepsSettings(), InMemoryBus()); await svc.start()
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import optuna
from halo_bus import subjects
from halo_runtime import Service
from halo_runtime.jobs import JobLifecycle
from halo_schemas.jobs import JobEnvelope
from prometheus_client import CollectorRegistry

from halo_sweeps import __version__, handlers
from halo_sweeps.core.coordinator import Coordinator
from halo_sweeps.core.study import open_storage
from halo_sweeps.metrics import SweepsMetrics
from halo_sweeps.settings import SweepsSettings


class Sweeps(Service):
    name = "sweeps"
    version = __version__
    description = "Optuna sweeps over any training spec"
    settings_cls = SweepsSettings

    storage: optuna.storages.RDBStorage

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings: SweepsSettings
        self.metrics = SweepsMetrics(self.telemetry.registry if self.telemetry else CollectorRegistry())
        self.coordinators: dict[str, tuple[JobLifecycle, Coordinator]] = {}
        # Set on shutdown: coordinators stop watching and leave their sweep (and its running trials) for the
        # next coordinator, which picks the trials up by their recorded job ids.
        self.stopping = asyncio.Event()

    @property
    def instance_id(self) -> str:
        return self.registration.id if self.registration else self.name

    async def setup(self) -> None:
        s = self.settings
        self.storage = await asyncio.to_thread(open_storage, s.database_url, s.home)
        for verb, handler, request_type in handlers.endpoints(self):
            await self.endpoint(verb, handler, request_type)
        await self.track(await self.bus.consume_jobs(
            subjects.SWEEPS_JOB, subjects.job_consumer_name("sweeps", "sweep"),
            functools.partial(handlers.run_job, self), JobEnvelope, ack_wait_s=s.job_ack_wait_s,
            max_deliver=s.job_max_deliver, concurrency=s.max_concurrent_sweeps))

    def checks(self) -> dict[str, str]:
        try:
            self.storage.get_all_studies()
        except Exception as exc:
            return {"database": f"{type(exc).__name__}: {exc}"}
        return {"database": "ok"}

    async def drain(self) -> None:
        # The job consumer has already cancelled the coordinators (their sweeps stay unacknowledged and are
        # redelivered); this stops any that is between two awaits.
        self.stopping.set()
        for _job, coordinator in list(self.coordinators.values()):
            coordinator.wake()
