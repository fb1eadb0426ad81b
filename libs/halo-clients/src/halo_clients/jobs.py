"""Jobs of every service, and the routing table that says which service runs a job.

A job type (``sft``, ``dpo``, ``grpo``, ``generate``, ``eval``…) is served by one service per backend.
Services plug in by registration, so the gateway and the CLI never name a service themselves::

    from halo_clients.jobs import JobsClient, register_route

    register_route("sft", "trainer-mlx", backend="mlx")    # next to trainer-torch's ("sft", "torch")

    jobs = JobsClient(bus)
    route = await jobs.route("sft", backend="auto")        # -> JobRoute(job_type="sft", service="trainer-torch", ...)
    submitted = await jobs.submit(route, spec)             # queued status first, then the work queue
    status = await jobs.status(submitted.job_id)
    await jobs.cancel(submitted.job_id)

``backend="auto"`` picks, among the services registered for the job type, one that is running now
(NATS micro discovery); when several are (or none is), the host's own backend decides: ``mlx`` on a
host whose accelerator is Apple's MLX, ``torch`` elsewhere.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from halo_bus import Bus, subjects
from halo_common.backend import detect_backend
from halo_common.errors import BadRequest, NotFound, Unavailable
from halo_runtime.jobs import request_cancel, submit_job
from halo_schemas.base import UserInput
from halo_schemas.jobs import JobRef, JobState, JobStatus, JobSubmitted

BACKENDS = ("torch", "mlx")


@dataclass(frozen=True)
class JobRoute:
    """``job_type`` runs on ``service`` for ``backend`` (None: the service is backend-neutral)."""

    job_type: str
    service: str
    backend: str | None = None


_ROUTES: dict[str, list[JobRoute]] = {}


def register_route(job_type: str, service: str, backend: str | None = None) -> JobRoute:
    """Declare that ``service`` runs ``job_type`` jobs (for ``backend``). Idempotent."""
    if service not in subjects.SERVICES:
        raise ValueError(f"unknown service {service!r}; known: {', '.join(subjects.SERVICES)}")
    route = JobRoute(job_type, service, backend)
    routes = _ROUTES.setdefault(job_type, [])
    if route not in routes:
        routes.append(route)
    return route


def routes_for(job_type: str) -> list[JobRoute]:
    """Every registered route of ``job_type`` (empty when none)."""
    return list(_ROUTES.get(job_type, ()))


def job_types() -> list[str]:
    return sorted(_ROUTES)


def host_backend() -> str:
    """The training backend family this host prefers: ``mlx`` on Apple's MLX, else ``torch``."""
    return "mlx" if str(detect_backend()) == "mlx" else "torch"


def choose_route(job_type: str, backend: str = "auto", running: set[str] | None = None) -> JobRoute:
    """The route for ``job_type`` on ``backend`` (``auto | torch | mlx``); ``running`` = services up now."""
    routes = routes_for(job_type)
    if not routes:
        raise NotFound(f"unknown job type {job_type!r}; known: {', '.join(job_types())}", param="job_type")
    if backend != "auto":
        if backend not in BACKENDS:
            raise BadRequest(f"backend must be one of auto, {', '.join(BACKENDS)}; got {backend!r}", param="backend")
        matching = [r for r in routes if r.backend in (backend, None)]
        if not matching:
            served = ", ".join(sorted({r.backend or "any" for r in routes}))
            raise BadRequest(f"{job_type} jobs run on backend {served}, not {backend!r}", param="backend")
        return matching[0]
    candidates = [r for r in routes if running is None or r.service in running] or routes
    preferred = [r for r in candidates if r.backend in (host_backend(), None)]
    return (preferred or candidates)[0]


class JobsClient:
    """Submit, inspect and cancel jobs of any service over the bus."""

    def __init__(self, bus: Bus, timeout: float = 10.0) -> None:
        self.bus, self.timeout = bus, timeout

    async def running_services(self) -> set[str]:
        """Names of the services that answer NATS micro discovery now."""
        try:
            return {info.name for info in await self.bus.discover()}
        except Exception:  # discovery is advisory: routing falls back to the host's backend
            return set()

    async def route(self, job_type: str, backend: str = "auto") -> JobRoute:
        running = await self.running_services() if backend == "auto" and len(routes_for(job_type)) > 1 else None
        return choose_route(job_type, backend, running)

    async def submit(self, route: JobRoute, spec: UserInput, total_steps: int | None = None,
                     job_id: str | None = None, run_id: str | None = None) -> JobSubmitted:
        """Queue ``spec`` for ``route.service`` (a failed enqueue leaves a failed status, never a stuck one).
        A caller that chose ``job_id`` beforehand (a sweep records it first) may submit again after a crash:
        the work queue drops the duplicate."""
        return await submit_job(self.bus, service=route.service, job_type=route.job_type, spec=spec,
                                total_steps=total_steps, job_id=job_id, run_id=run_id)

    async def status(self, job_id: str) -> JobStatus:
        status = await self.bus.kv_get(subjects.KV_JOB_STATE, job_id, JobStatus)
        if status is None:
            raise NotFound(f"no job {job_id!r}", param="job_id")
        return status

    async def list(self, state: JobState | None = None, job_type: str | None = None,
                   service: str | None = None, limit: int = 50) -> list[JobStatus]:
        """Jobs, newest first, filtered by state / type / service."""
        keys = await self.bus.kv_keys(subjects.KV_JOB_STATE)
        found = await asyncio.gather(*(self.bus.kv_get(subjects.KV_JOB_STATE, k, JobStatus) for k in keys))
        jobs = [j for j in found if j is not None and (state is None or j.state == state)
                and (job_type is None or j.job_type == job_type) and (service is None or j.service == service)]
        jobs.sort(key=lambda j: (j.created_at, j.job_id), reverse=True)
        return jobs[:limit]

    async def cancel(self, job_id: str) -> JobStatus:
        """Ask the job to stop. The owning service stops it at once when it is running there; when that
        service is down the request is recorded and the worker that picks the job up cancels it."""
        status = await self.status(job_id)
        if status.state.terminal:
            return status
        if status.service in subjects.SERVICES:
            try:
                return await self.bus.request(subjects.rpc(status.service, "cancel"), JobRef(job_id=job_id),
                                              JobStatus, timeout=self.timeout)
            except Unavailable:
                pass
        recorded = await request_cancel(self.bus, job_id)
        assert recorded is not None
        return recorded


# The job types the services of this repository run. A new service adds its line here.
for _method in subjects.TRAINER_TORCH_JOB_TYPES:
    register_route(_method, "trainer-torch", backend="torch")
for _method in subjects.TRAINER_MLX_JOB_TYPES:
    register_route(_method, "trainer-mlx", backend="mlx")
register_route("generate", "rollout")
for _eval_type in subjects.EVAL_JOB_TYPES:
    register_route(_eval_type, "eval")
for _data_type in subjects.DATA_JOB_TYPES:
    register_route(_data_type, "data")
register_route("sweep", "sweeps")
for _serve_type in subjects.SERVE_JOB_TYPES:  # convert, merge-bake, merge-combine
    register_route(_serve_type, "serve")
