"""Trials as ordinary training jobs on the bus: submitted through the job routing table (so they run on
trainer-torch or trainer-mlx, per the base spec's ``backend``), watched through their run events, pruned by
cancelling the job. With an eval objective, each trained trial is evaluated by an ``lm-eval`` job on the eval
service (submitted through :class:`~halo_clients.eval.EvalClient`'s job client, under the ids the coordinator
recorded)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from halo_bus import Bus, subjects
from halo_bus.api import EventRecord, Subscription
from halo_clients.eval import EvalClient
from halo_clients.jobs import JobRoute, JobsClient
from halo_common.errors import NotFound
from halo_schemas.eval import EvalJobSpec
from halo_schemas.jobs import JobStatus
from halo_schemas.training import TrainSpecBase


class BusTrials:
    """The coordinator's :class:`~halo_sweeps.core.coordinator.TrialBackend` over a :class:`~halo_bus.Bus`."""

    def __init__(self, bus: Bus, timeout: float = 10.0) -> None:
        self.bus = bus
        self.jobs = JobsClient(bus, timeout=timeout)
        self.eval = EvalClient(bus)
        # Routes once per (job type, backend): with ``backend: auto`` routing asks the bus which trainers run (a
        # 0.5 s discovery), which every trial would otherwise wait for between the last trial's end and its start.
        self.routes: dict[tuple[str, str], JobRoute] = {}

    async def _route(self, jobs: JobsClient, job_type: str, backend: str = "auto") -> JobRoute:
        if (job_type, backend) not in self.routes:
            self.routes[(job_type, backend)] = await jobs.route(job_type, backend)
        return self.routes[(job_type, backend)]

    async def submit(self, method: str, spec: TrainSpecBase, *, job_id: str, run_id: str) -> None:
        route = await self._route(self.jobs, method, spec.backend)
        await self.jobs.submit(route, spec, total_steps=spec.max_steps, job_id=job_id, run_id=run_id)

    async def submit_eval(self, spec: EvalJobSpec, *, job_id: str, run_id: str) -> None:
        # The task was resolved when the sweep was created (eval.check); the trial's run exists by now.
        route = await self._route(self.eval.jobs, "lm-eval")
        await self.eval.jobs.submit(route, spec, job_id=job_id, run_id=run_id)

    async def cancel(self, job_id: str) -> None:
        await self.jobs.cancel(job_id)

    async def status(self, job_id: str) -> JobStatus | None:
        try:
            return await self.jobs.status(job_id)
        except NotFound:
            return None

    async def watch(self, run_id: str, handler: Callable[[EventRecord[Any]], Awaitable[None]]) -> Subscription:
        # From the run's first event: a restarted coordinator sees what it missed.
        return await self.bus.subscribe_events(subjects.run_events_filter(run_id), handler, deliver_all=True)

    async def replay(self, run_id: str) -> list[EventRecord[Any]]:
        return await self.bus.replay(subjects.run_events_filter(run_id))
