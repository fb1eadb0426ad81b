"""Typed client of the eval service::

    from halo_clients.eval import EvalClient

    ev = EvalClient(bus)
    checked = await ev.check(tasks=["offline"], model="/models/tiny")     # BadRequest naming an unknown task
    submitted = await ev.submit_eval(EvalJobSpec(model="run:run-abc", tasks=["offline"], limit=50))
    submitted = await ev.submit_probe(ProbeJobSpec(model=ckpt, baseline_scores={...}, tolerance=0.05))
    submitted = await ev.submit_passk(PassKJobSpec(model=m, dataset="humaneval", n=10, k=[1, 5, 10]))
    final = await ev.wait(submitted, timeout=600)     # the run's RunFinished (state, summary, error)

Submitting checks the spec with ``eval.check`` first (unknown task, missing model, empty dataset are
refused before anything is queued), then queues the job through :class:`~halo_clients.jobs.JobsClient`.
"""

from __future__ import annotations

import asyncio
import time

from halo_bus import Bus, subjects
from halo_common.errors import Unavailable
from halo_schemas.eval import (
    EvalCheck,
    EvalCheckRequest,
    EvalJobSpec,
    EvalTaskList,
    EvalTaskListRequest,
    PassKJobSpec,
    ProbeJobSpec,
)
from halo_schemas.events import RunFinished
from halo_schemas.jobs import JobSubmitted

from halo_clients.jobs import JobsClient


class EvalClient:
    """``timeout`` bounds a check (it may build lm-eval's task index on a cold service: tens of seconds)."""

    def __init__(self, bus: Bus, timeout: float = 120.0) -> None:
        self.bus, self.timeout = bus, timeout
        self.jobs = JobsClient(bus)

    async def check(self, *, tasks: list[str] | None = None, model: str | None = None, adapter: str | None = None,
                    backend: str = "hf", dataset: str | None = None) -> EvalCheck:
        req = EvalCheckRequest(tasks=tasks or [], model=model, adapter=adapter, backend=backend,  # type: ignore[arg-type]
                               dataset=dataset)
        return await self.bus.request(subjects.EVAL_CHECK, req, EvalCheck, timeout=self.timeout)

    async def task_list(self) -> EvalTaskList:
        return await self.bus.request(subjects.EVAL_TASKS, EvalTaskListRequest(), EvalTaskList, timeout=self.timeout)

    async def submit_eval(self, spec: EvalJobSpec, check: bool = True) -> JobSubmitted:
        if check:
            await self.check(tasks=spec.tasks, model=spec.model if spec.backend != "served" else None,
                             adapter=spec.adapter, backend=spec.backend)
        return await self.jobs.submit(await self.jobs.route("lm-eval"), spec)

    async def submit_probe(self, spec: ProbeJobSpec, check: bool = True) -> JobSubmitted:
        if check:
            await self.check(tasks=spec.tasks, model=spec.model if spec.backend != "served" else None,
                             backend=spec.backend)
        return await self.jobs.submit(await self.jobs.route("probe"), spec)

    async def submit_passk(self, spec: PassKJobSpec, check: bool = True) -> JobSubmitted:
        if check:
            await self.check(dataset=spec.dataset)
        return await self.jobs.submit(await self.jobs.route("passk"), spec)

    async def wait(self, submitted: JobSubmitted, timeout: float = 3600.0, poll_s: float = 0.5) -> RunFinished:
        """The job's ``finished`` event (any state). Unavailable when it does not finish within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = await self.bus.replay(subjects.run_event("eval", submitted.run_id, "finished"))
            for r in records:
                if isinstance(r.message, RunFinished):
                    return r.message
            await asyncio.sleep(poll_s)
        raise Unavailable(f"eval job {submitted.job_id} did not finish within {timeout:.0f} s")
