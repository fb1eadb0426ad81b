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
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import StreamingResponse
from halo_bus import Bus, subjects
from halo_bus.api import EventRecord
from halo_common.errors import BadRequest, NotFound, Unavailable
from halo_common.ids import new_id
from halo_schemas.base import describe_validation_error, utcnow
from halo_schemas.events import RunFinished
from halo_schemas.jobs import JobEnvelope, JobRef, JobState, JobStatus, JobSubmitted
from halo_schemas.training import TRAINING_JOB_SPECS, PreviewRequest, PreviewResult, TrainSpecBase
from pydantic import BaseModel, Field, ValidationError

from halo_gateway.app import get_bus

router = APIRouter()

SERVICE = "trainer-torch"
_ID = re.compile(r"^[A-Za-z0-9_-]+$")


class JobList(BaseModel):
    jobs: list[JobStatus] = Field(description="Jobs, newest first.")


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
    if not _ID.match(value):
        raise BadRequest(f"invalid {name} {value!r}", param=name)
    return value


@router.post("/api/v1/jobs/{method}", response_model=JobSubmitted, tags=["jobs"])
async def submit_job(method: str, body: dict[str, Any] = Body(...), bus: Bus = Depends(get_bus)) -> JobSubmitted:
    """Validate the spec (400 naming the field), record the job as queued, enqueue it for trainer-torch."""
    spec = _spec(method, body)
    job_id, run_id = new_id("job"), new_id("run")
    envelope = JobEnvelope(job_id=job_id, run_id=run_id, job_type=method, spec_schema=type(spec).schema_id,
                           spec=spec.model_dump(mode="json"))
    # The status goes in first: a fast worker may pick the job up before submit_job returns.
    await bus.kv_put(subjects.KV_JOB_STATE, job_id, JobStatus(
        job_id=job_id, run_id=run_id, job_type=method, service=SERVICE, state=JobState.QUEUED,
        total_steps=spec.max_steps))
    try:
        await bus.submit_job(subjects.job(SERVICE, method), envelope, msg_id=job_id)
    except Exception as exc:
        with contextlib.suppress(Exception):  # do not leave a "queued" job that was never enqueued
            await bus.kv_put(subjects.KV_JOB_STATE, job_id, JobStatus(
                job_id=job_id, run_id=run_id, job_type=method, service=SERVICE, state=JobState.FAILED,
                error=f"could not enqueue: {exc}"))
        raise
    return JobSubmitted(job_id=job_id, run_id=run_id, state=JobState.QUEUED)


@router.post("/api/v1/jobs/{method}/preview", response_model=PreviewResult, tags=["jobs"])
async def preview_job(method: str, request: Request, body: dict[str, Any] = Body(...),
                      samples: int = Query(1, ge=1, le=20, description="Records to render."),
                      bus: Bus = Depends(get_bus)) -> PreviewResult:
    """Dry run on a trainer: data validation, resolved settings and rendered samples (trained vs masked)."""
    spec = _spec(method, body)
    timeout = max(request.app.state.settings.rpc_timeout_s, 120.0)  # may build a tokenizer / read a big file
    return await bus.request(subjects.TRAINER_TORCH_PREVIEW,
                             PreviewRequest(method=method, spec=spec.model_dump(mode="json"), num_samples=samples),
                             PreviewResult, timeout=timeout)


@router.get("/api/v1/jobs", response_model=JobList, tags=["jobs"])
async def list_jobs(state: JobState | None = Query(None, description="Only jobs in this state."),
                    job_type: str | None = Query(None, description="Only this job type (sft, dpo, ...)."),
                    limit: int = Query(50, ge=1, le=1000, description="At most this many jobs."),
                    bus: Bus = Depends(get_bus)) -> JobList:
    keys = await bus.kv_keys(subjects.KV_JOB_STATE)
    found = await asyncio.gather(*(bus.kv_get(subjects.KV_JOB_STATE, k, JobStatus) for k in keys))
    jobs = [j for j in found if j is not None and (state is None or j.state == state)
            and (job_type is None or j.job_type == job_type)]
    jobs.sort(key=lambda j: (j.created_at, j.job_id), reverse=True)
    return JobList(jobs=jobs[:limit])


@router.get("/api/v1/jobs/{job_id}", response_model=JobStatus, tags=["jobs"])
async def get_job(job_id: str, bus: Bus = Depends(get_bus)) -> JobStatus:
    status = await bus.kv_get(subjects.KV_JOB_STATE, _check_id(job_id, "job_id"), JobStatus)
    if status is None:
        raise NotFound(f"no job {job_id!r}", param="job_id")
    return status


@router.post("/api/v1/jobs/{job_id}/cancel", response_model=JobStatus, tags=["jobs"])
async def cancel_job(job_id: str, request: Request, bus: Bus = Depends(get_bus)) -> JobStatus:
    """Ask the job to stop: a running job stops after its current step; a queued one never starts."""
    status = await get_job(job_id, bus)
    if status.state.terminal:
        return status
    try:
        if status.service not in subjects.SERVICES:
            raise Unavailable(f"unknown service {status.service!r}")
        subject = subjects.TRAINER_TORCH_CANCEL if status.service == SERVICE else subjects.rpc(status.service, "cancel")
        return await bus.request(subject, JobRef(job_id=job_id), JobStatus,
                                 timeout=request.app.state.settings.rpc_timeout_s)
    except Unavailable:
        # No trainer is up: record the request; the trainer that picks the job up cancels it.
        status = status.model_copy(update={"cancel_requested": True, "updated_at": utcnow()})
        await bus.kv_put(subjects.KV_JOB_STATE, job_id, status)
        return status


def _event_line(record: EventRecord[Any]) -> str:
    msg = record.message
    payload = {"type": record.subject.rsplit(".", 1)[-1], "schema": getattr(type(msg), "schema_id", ""),
               "message": msg.model_dump(mode="json")}
    return f"data: {json.dumps(payload)}\n\n"


@router.get("/api/v1/runs/{run_id}/events", tags=["jobs"])
async def run_events(run_id: str, request: Request,
                     follow: bool = Query(True, description="Keep streaming live events until the run finishes."),
                     bus: Bus = Depends(get_bus)) -> StreamingResponse:
    """The run's events as server-sent events: every stored one first, then (``follow``) live ones until
    RunFinished. A comment line is sent every 15 s of silence to keep proxies from closing the stream."""
    _check_id(run_id, "run_id")
    filter_subject = subjects.run_events_filter(run_id)

    async def history_only() -> AsyncIterator[str]:
        for record in await bus.replay(filter_subject):
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

    return StreamingResponse(live() if follow else history_only(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
