"""Training jobs: submit (validated here first), list, show, cancel, dry-run preview, and a run's events as
server-sent events (history first, then live until the run finishes).

* ``POST /api/v1/jobs/{method}``          body = the method's spec (``SFTSpec``...) -> ``JobSubmitted``
* ``POST /api/v1/jobs/{method}/preview``  body = spec, ``?samples=N`` -> ``PreviewResult`` (no training)
* ``GET  /api/v1/jobs``                   -> ``{"jobs": [JobStatus...]}`` newest first
* ``GET  /api/v1/jobs/{job_id}``          -> ``JobStatus``
* ``POST /api/v1/jobs/{job_id}/cancel``   -> ``JobStatus`` with ``cancel_requested``
* ``GET  /api/v1/runs/{run_id}/events``   -> ``text/event-stream``; each ``data:`` line is
  ``{"type": "progressed", "schema": "...", "message": {...}}``
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from halo_bus import Bus, subjects
from halo_bus.api import EventRecord
from halo_clients import JobsClient, RegistryClient, TrainerClient
from halo_clients.data import resolve_dataset_refs
from halo_common.errors import BadRequest, HaloError, NotFound
from halo_common.ids import validate_id
from halo_schemas.base import describe_validation_error
from halo_schemas.events import RunFinished
from halo_schemas.jobs import JobState, JobStatus, JobSubmitted
from halo_schemas.methods import TRAINING_JOB_SPECS
from halo_schemas.training import PreviewResult, TrainSpecBase
from pydantic import BaseModel, Field, ValidationError

from halo_gateway.app import get_bus
from halo_gateway.core.jobpolicy import check_job

router = APIRouter()



class EventStream(StreamingResponse):
    """Declares ``text/event-stream`` as the route's response type in the OpenAPI document."""

    media_type = "text/event-stream"


class JobList(BaseModel):
    jobs: list[JobStatus] = Field(description="Jobs, newest first.")


#: The ``{method}`` path parameter, documented with its known values (an unknown one is a 404 naming them).
METHOD = PathParam(description="Training method.", json_schema_extra={"enum": sorted(TRAINING_JOB_SPECS)})


def _spec(method: str, body: dict[str, Any]) -> TrainSpecBase:
    cls = TRAINING_JOB_SPECS.get(method)
    if cls is None:
        raise NotFound(f"unknown training method {method!r}; known: {', '.join(TRAINING_JOB_SPECS)}", param="method")
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        raise BadRequest(describe_validation_error(exc, what=f"{method} spec"),
                         param=".".join(str(p) for p in first) or None) from None


def _check_id(value: str, name: str) -> str:
    return validate_id(value, name)  # the one id rule (ids become KV keys and subject tokens)


@router.post("/api/v1/jobs/{method}", response_model=JobSubmitted, tags=["jobs"])
async def submit_job(request: Request, method: str = METHOD, body: dict[str, Any] = Body(...),
                     bus: Bus = Depends(get_bus)) -> JobSubmitted:
    """Validate the spec (400 naming the field), apply the host's policy (403: code execution, paths outside the
    data roots) and a preflight (404 ``model not found``, 422 unreadable data), record the job as queued and
    enqueue it for the trainer that serves the spec's ``backend`` (the routing table of
    :mod:`halo_clients.jobs`)."""
    spec = await resolve_dataset_refs(bus, _spec(method, body))  # data.train: dataset:<id> -> its registered path
    check_job(spec, request.app.state.settings, preflight=True)
    jobs = JobsClient(bus, timeout=request.app.state.settings.rpc_timeout_s)
    return await jobs.submit(await jobs.route(method, spec.backend), spec, total_steps=spec.max_steps)


@router.post("/api/v1/jobs/{method}/preview", response_model=PreviewResult, tags=["jobs"])
async def preview_job(request: Request, method: str = METHOD, body: dict[str, Any] = Body(...),
                      samples: int = Query(1, ge=1, le=20, description="Records to render."),
                      bus: Bus = Depends(get_bus)) -> PreviewResult:
    """Dry run on a trainer: data validation, resolved settings and rendered samples (trained vs masked)."""
    spec = await resolve_dataset_refs(bus, _spec(method, body))
    check_job(spec, request.app.state.settings, preflight=False)  # the trainer's dry run reports data problems
    route = await JobsClient(bus).route(method, spec.backend)
    timeout = max(request.app.state.settings.rpc_timeout_s, 120.0)  # may build a tokenizer / read a big file
    return await TrainerClient(bus, service=route.service, timeout=timeout).preview(method, spec, samples)


@router.get("/api/v1/jobs", response_model=JobList, tags=["jobs"])
async def list_jobs(state: JobState | None = Query(None, description="Only jobs in this state."),
                    job_type: str | None = Query(None, description="Only this job type (sft, dpo, ...)."),
                    limit: int = Query(50, ge=1, le=1000, description="At most this many jobs."),
                    bus: Bus = Depends(get_bus)) -> JobList:
    return JobList(jobs=await JobsClient(bus).list(state=state, job_type=job_type, limit=limit))


@router.get("/api/v1/jobs/{job_id}", response_model=JobStatus, tags=["jobs"])
async def get_job(job_id: str, bus: Bus = Depends(get_bus)) -> JobStatus:
    return await JobsClient(bus).status(_check_id(job_id, "job_id"))


@router.post("/api/v1/jobs/{job_id}/cancel", response_model=JobStatus, tags=["jobs"])
async def cancel_job(job_id: str, request: Request, bus: Bus = Depends(get_bus)) -> JobStatus:
    """Ask the job to stop: a running job stops after its current step; a queued one never starts."""
    jobs = JobsClient(bus, timeout=request.app.state.settings.rpc_timeout_s)
    return await jobs.cancel(_check_id(job_id, "job_id"))


def _event_line(record: EventRecord[Any]) -> str:
    msg = record.message
    payload = {"type": record.subject.rsplit(".", 1)[-1], "schema": getattr(type(msg), "schema_id", ""),
               "message": msg.model_dump(mode="json")}
    return f"data: {json.dumps(payload)}\n\n"


async def _run_known(bus: Bus, run_id: str, timeout: float) -> bool:
    """True when the run has a job record (queued or later) or a registry record."""
    if any(job.run_id == run_id for job in await JobsClient(bus).list(limit=1_000_000)):
        return True
    try:
        await RegistryClient(bus, timeout=timeout).get(run_id)
        return True
    except HaloError:  # not found, or no registry running: the other answers decide
        return False


@router.get("/api/v1/runs/{run_id}/events", tags=["jobs"], response_class=EventStream)
async def run_events(run_id: str, request: Request,
                     follow: bool = Query(True, description="Keep streaming live events until the run finishes."),
                     bus: Bus = Depends(get_bus)) -> StreamingResponse:
    """The run's events as server-sent events: every stored one first, then (``follow``) live ones until
    RunFinished. A comment line is sent every 15 s of silence to keep proxies from closing the stream."""
    _check_id(run_id, "run_id")
    filter_subject = subjects.run_events_filter(run_id)
    history = await bus.replay(filter_subject)
    # An unknown run is a 404 now, not an empty stream that waits forever.
    if not history and not await _run_known(bus, run_id, request.app.state.settings.rpc_timeout_s):
        raise NotFound(f"no run {run_id!r}: no events, no job and no registry record", param="run_id")

    async def history_only() -> AsyncIterator[str]:
        for record in history:
            yield _event_line(record)

    async def live() -> AsyncIterator[str]:
        queue: asyncio.Queue[EventRecord[Any]] = asyncio.Queue()

        async def on_event(record: EventRecord[Any]) -> None:
            await queue.put(record)

        sub = await bus.subscribe_events(filter_subject, on_event, deliver_all=True)
        seen: set[tuple[str, int]] = set()
        try:
            while True:
                try:
                    record = await asyncio.wait_for(queue.get(), timeout=15.0)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keepalive\n\n"
                    continue
                key = (record.subject, int(getattr(record.message, "seq", -1)))
                if key in seen:
                    continue
                seen.add(key)
                yield _event_line(record)
                if isinstance(record.message, RunFinished):
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.stop()

    return EventStream(live() if follow else history_only(),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
