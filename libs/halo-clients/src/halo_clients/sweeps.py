"""Typed client of sweeps::

    from halo_clients.sweeps import SweepsClient

    sweeps = SweepsClient(bus)
    started = await sweeps.create({"method": "sft", "base": {...}, "search_space": {...}})
    info = await sweeps.show(started.sweep_id)          # trials, best, importances
    best = await sweeps.best(started.sweep_id)
    forked = await sweeps.fork_best(started.sweep_id, overrides={"max_steps": 2000})

Each method is one request/reply on a ``halo.rpc.sweeps.*`` subject; errors arrive as the service raised them,
an absent service as :class:`~halo_common.errors.Unavailable`.
"""

from __future__ import annotations

from typing import Any

from halo_bus import Bus, subjects
from halo_schemas.health import HealthRequest, ServiceHealth
from halo_schemas.jobs import JobRef, JobStatus
from halo_schemas.sweeps import (
    SweepBest,
    SweepCreateRequest,
    SweepForked,
    SweepForkRequest,
    SweepInfo,
    SweepList,
    SweepListRequest,
    SweepRef,
    SweepStarted,
)


class SweepsClient:
    def __init__(self, bus: Bus, timeout: float = 10.0) -> None:
        self.bus, self.timeout = bus, timeout

    async def health(self) -> ServiceHealth:
        return await self.bus.request(subjects.rpc("sweeps", "health"), HealthRequest(), ServiceHealth,
                                      timeout=self.timeout)

    async def create(self, spec: dict[str, Any]) -> SweepStarted:
        """Validate ``spec`` (a SweepSpec as JSON; BadRequest naming the field) and start the sweep. An eval objective
        is resolved on the eval service first (a cold one builds lm-eval's task index): at least 120 s."""
        return await self.bus.request(subjects.SWEEPS_CREATE, SweepCreateRequest(spec=spec), SweepStarted,
                                      timeout=max(self.timeout, 120.0))

    async def list(self, limit: int = 50) -> SweepList:
        return await self.bus.request(subjects.SWEEPS_LIST, SweepListRequest(limit=limit), SweepList,
                                      timeout=self.timeout)

    async def show(self, sweep_id: str) -> SweepInfo:
        return await self.bus.request(subjects.SWEEPS_SHOW, SweepRef(sweep_id=sweep_id), SweepInfo,
                                      timeout=self.timeout)

    async def cancel(self, sweep_id: str) -> SweepInfo:
        """Cancel the sweep's coordinator (it cancels its running trials); returns the sweep."""
        info = await self.show(sweep_id)
        if info.job_id is not None:
            await self.bus.request(subjects.SWEEPS_CANCEL, JobRef(job_id=info.job_id), JobStatus,
                                   timeout=self.timeout)
        return await self.show(sweep_id)

    async def resume(self, sweep_id: str) -> SweepStarted:
        return await self.bus.request(subjects.SWEEPS_RESUME, SweepRef(sweep_id=sweep_id), SweepStarted,
                                      timeout=self.timeout)

    async def best(self, sweep_id: str) -> SweepBest:
        return await self.bus.request(subjects.SWEEPS_BEST, SweepRef(sweep_id=sweep_id), SweepBest,
                                      timeout=self.timeout)

    async def fork_best(self, sweep_id: str, overrides: dict[str, Any] | None = None,
                        name: str | None = None) -> SweepForked:
        req = SweepForkRequest(sweep_id=sweep_id, overrides=overrides or {}, name=name)
        return await self.bus.request(subjects.SWEEPS_FORK_BEST, req, SweepForked, timeout=self.timeout)
