"""The job lifecycle every job service shares: submit, admit, run, heartbeat, cancel, finish.

A job lives in three places: its envelope on the work queue (``halo.job.<service>.<type>``), its
:class:`~halo_schemas.jobs.JobStatus` in the ``HALO_JOB_STATE`` KV bucket, and its run events
(``halo.evt.<service>.run.<run_id>.<event>``). This module keeps the three consistent, so a service
only writes what its job *does*.

Submitting (the gateway, the CLI, a sweep)::

    submitted = await submit_job(bus, service="trainer-torch", job_type="sft", spec=spec)

Running (a worker's consumer handler)::

    async def on_job(self, delivery):
        gate = await admit(self.bus, delivery.message, service=self.name, worker=self.instance_id,
                           running=self.running.keys(), known_types=METHODS, fresh_s=10)
        if gate is None:            # already finished, cancelled while queued, or an unknown type
            return                  # (the gate has closed the job where that was needed)
        job = JobLifecycle(self.bus, delivery.message, service=self.name, worker=self.instance_id,
                           previous=gate.previous, status_interval_s=2.0)
        await job.start(total_steps=100)          # status RUNNING, heartbeats, the event sequence
        job.emit("progressed", RunProgressed, step=1, metrics={...})   # from any thread
        if job.cancel_requested: ...
        await job.finish(JobState.SUCCEEDED, summary={...})

``JobLifecycle.emit`` may be called from a worker thread (torch and MLX run synchronously); events
are published in ``seq`` order by one pump task, with ``msg_id = <run_id>.<seq>`` so a retried publish
is deduplicated. A redelivered job continues the run's sequence where the previous attempt stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from halo_bus import Bus, subjects
from halo_common.errors import HaloError, NotFound, Unavailable
from halo_common.ids import new_id
from halo_schemas.base import UserInput, utcnow
from halo_schemas.events import RunEvent, RunFinished
from halo_schemas.jobs import JobEnvelope, JobState, JobStatus, JobSubmitted

log = logging.getLogger("halo_runtime.jobs")

#: Publish attempts per event before it is dropped (NATS briefly away; the run dir keeps the data).
PUBLISH_ATTEMPTS = 5


async def read_status(bus: Bus, job_id: str) -> JobStatus | None:
    """The job's current status from the KV bucket, or None when it was never recorded."""
    return await bus.kv_get(subjects.KV_JOB_STATE, job_id, JobStatus)


async def last_seq(bus: Bus, run_id: str) -> int:
    """Highest ``seq`` already published for the run, 0 for none: a run's events are numbered from 1, and a
    resumed run continues the sequence."""
    try:
        records = await bus.replay(subjects.run_events_filter(run_id))
    except Exception:  # best effort: an unreadable history restarts at 1, and consumers dedup by (subject, seq)
        return 0
    return max((int(getattr(r.message, "seq", 0)) for r in records), default=0)


# ---- submitting --------------------------------------------------------------------------------------
async def submit_job(bus: Bus, *, service: str, job_type: str, spec: UserInput, total_steps: int | None = None,
                     job_id: str | None = None, run_id: str | None = None) -> JobSubmitted:
    """Record the job as queued, then enqueue it on ``halo.job.<service>.<job_type>``.

    The status goes in first: a fast worker may pick the job up before this returns. If the enqueue fails,
    the status becomes ``failed`` ("could not enqueue: …") instead of a ``queued`` job that will never run,
    and :class:`~halo_common.errors.Unavailable` is raised.
    """
    job_id, run_id = job_id or new_id("job"), run_id or new_id("run")
    envelope = JobEnvelope(job_id=job_id, run_id=run_id, job_type=job_type,
                           spec_schema=getattr(type(spec), "schema_id", ""), spec=spec.model_dump(mode="json"))
    queued = JobStatus(job_id=job_id, run_id=run_id, job_type=job_type, service=service, state=JobState.QUEUED,
                       total_steps=total_steps)
    await bus.kv_put(subjects.KV_JOB_STATE, job_id, queued)
    try:
        await bus.submit_job(subjects.job(service, job_type), envelope, msg_id=job_id)
    except Exception as exc:
        with contextlib.suppress(Exception):  # best effort: the original failure is what the caller must see
            await bus.kv_put(subjects.KV_JOB_STATE, job_id, queued.model_copy(update={
                "state": JobState.FAILED, "error": f"could not enqueue: {exc}", "updated_at": utcnow()}))
        if isinstance(exc, HaloError):
            raise
        raise Unavailable(f"could not enqueue the {job_type} job for {service}: {exc}") from exc
    return JobSubmitted(job_id=job_id, run_id=run_id, state=JobState.QUEUED)


# ---- admitting a delivery ----------------------------------------------------------------------------
def alive_elsewhere(status: JobStatus | None, *, worker: str, running_here: Collection[str], fresh_s: float) -> bool:
    """True while another worker still heartbeats this job (a redelivery it did not cause, e.g. after a
    network partition): starting it here too would have two workers writing one run directory.

    Our own earlier attempt (same worker id, not running here: a restart) is not alive.
    """
    if status is None or status.state != JobState.RUNNING or status.heartbeat_at is None:
        return False
    if status.worker == worker and status.job_id not in running_here:
        return False
    return (utcnow() - status.heartbeat_at).total_seconds() < fresh_s


@dataclass(frozen=True)
class Admission:
    """A delivery that may run: the status it had before this attempt (None for a first delivery)."""

    previous: JobStatus | None


async def admit(bus: Bus, envelope: JobEnvelope, *, service: str, worker: str, running: Collection[str],
                fresh_s: float, known_types: Collection[str] | None = None,
                poll_s: float = 1.0) -> Admission | None:
    """Decide whether this delivery runs here. Returns None when it must simply be acknowledged.

    * While the job is alive on another instance (or already running here), hold the delivery — the bus keeps
      heartbeating it — until that instance finishes or stops heartbeating.
    * Already terminal (a duplicate delivery after it finished): None.
    * Unknown job type: closed as failed (status + ``finished`` event), None.
    * Cancel requested while it was queued: closed as cancelled, None.
    """
    previous = await read_status(bus, envelope.job_id)
    while envelope.job_id in running or alive_elsewhere(previous, worker=worker, running_here=running,
                                                        fresh_s=fresh_s):
        await asyncio.sleep(poll_s)
        previous = await read_status(bus, envelope.job_id)
        if previous is not None and previous.state.terminal:
            break
    if previous is not None and previous.state.terminal:
        log.info("job %s already %s; acknowledging the redelivery", envelope.job_id, previous.state)
        return None
    if known_types is not None and envelope.job_type not in known_types:
        await finish_without_running(bus, envelope, service=service, previous=previous, state=JobState.FAILED,
                                     error=f"unknown job type {envelope.job_type!r}; known: {', '.join(known_types)}")
        return None
    if previous is not None and previous.cancel_requested:
        await finish_without_running(bus, envelope, service=service, previous=previous, state=JobState.CANCELLED,
                                     error="cancelled before it started")
        return None
    return Admission(previous=previous)


async def finish_without_running(bus: Bus, envelope: JobEnvelope, *, service: str, previous: JobStatus | None,
                                 state: JobState, error: str | None, **event_fields: Any) -> None:
    """Close a job that will not run (cancelled while queued, unknown type, invalid spec): a ``finished``
    event (continuing the run's sequence) and a terminal status."""
    seq = await last_seq(bus, envelope.run_id) + 1
    await bus.publish_event(
        subjects.run_event(service, envelope.run_id, "finished"),
        RunFinished(run_id=envelope.run_id, job_id=envelope.job_id, service=service, seq=seq, state=state,
                    error=error, **event_fields),
        msg_id=f"{envelope.run_id}.{seq}",
    )
    await bus.kv_put(subjects.KV_JOB_STATE, envelope.job_id, JobStatus(
        job_id=envelope.job_id, run_id=envelope.run_id, job_type=envelope.job_type, service=service, state=state,
        attempt=previous.attempt if previous else 0, error=error,
        cancel_requested=bool(previous and previous.cancel_requested),
        created_at=previous.created_at if previous else envelope.submitted_at))


async def request_cancel(bus: Bus, job_id: str) -> JobStatus | None:
    """Mark a job ``cancel_requested`` in KV (its worker stops at the next check). None if unknown;
    a terminal job is returned unchanged."""
    status = await read_status(bus, job_id)
    if status is None or status.state.terminal:
        return status
    status = status.model_copy(update={"cancel_requested": True, "updated_at": utcnow()})
    await bus.kv_put(subjects.KV_JOB_STATE, job_id, status)
    return status


async def cancel_job(bus: Bus, running: Mapping[str, JobLifecycle], job_id: str) -> JobStatus:
    """A service's ``cancel`` RPC: stop the job at once when it runs here, else record the request in KV (the
    worker running it, or the one that picks it up, stops it). NotFound for an unknown job."""
    job = running.get(job_id)
    if job is not None:
        job.cancel()
        return await job.write_status()
    status = await request_cancel(bus, job_id)
    if status is None:
        raise NotFound(f"no job {job_id!r}", param="job_id")
    return status


# ---- running -----------------------------------------------------------------------------------------
class RunEvents:
    """One run's events, published in order with a strictly increasing ``seq``.

    ``emit`` is thread-safe and returns at once (one pump task publishes); ``publish`` awaits the event's
    turn. Open with :meth:`open` so the sequence continues after a redelivery; :meth:`close` flushes.
    """

    def __init__(self, bus: Bus, loop: asyncio.AbstractEventLoop, *, service: str, run_id: str, job_id: str,
                 first_seq: int) -> None:
        self.bus, self.loop = bus, loop
        self.service, self.run_id, self.job_id = service, run_id, job_id
        self._seq = first_seq
        self._lock = threading.Lock()
        self._queue: asyncio.Queue[tuple[str, RunEvent, asyncio.Future[None] | None] | None] = asyncio.Queue()
        self._pump = loop.create_task(self._run_pump())

    @classmethod
    async def open(cls, bus: Bus, *, service: str, run_id: str, job_id: str) -> RunEvents:
        return cls(bus, asyncio.get_running_loop(), service=service, run_id=run_id, job_id=job_id,
                   first_seq=await last_seq(bus, run_id) + 1)

    def _enqueue(self, name: str, event_cls: type[RunEvent], fields: dict[str, Any],
                 done: asyncio.Future[None] | None) -> None:
        # The seq is taken and the event queued under one lock, so queue order == seq order across threads.
        with self._lock:
            event = event_cls(run_id=self.run_id, job_id=self.job_id, service=self.service, seq=self._seq, **fields)
            self._seq += 1
            self.loop.call_soon_threadsafe(self._queue.put_nowait, (name, event, done))

    def emit(self, name: str, event_cls: type[RunEvent], **fields: Any) -> None:
        """Queue ``event_cls(**fields)`` as the run's ``name`` event (from any thread)."""
        self._enqueue(name, event_cls, fields, None)

    async def publish(self, name: str, event_cls: type[RunEvent], **fields: Any) -> None:
        """Queue the event and wait until it was published (or dropped after retries)."""
        done: asyncio.Future[None] = self.loop.create_future()
        self._enqueue(name, event_cls, fields, done)
        await done

    async def _run_pump(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            name, event, done = item
            subject = subjects.run_event(self.service, self.run_id, name)
            for attempt in range(PUBLISH_ATTEMPTS):
                try:
                    await self.bus.publish_event(subject, event, msg_id=f"{self.run_id}.{event.seq}")
                    break
                except Exception as exc:
                    if attempt == PUBLISH_ATTEMPTS - 1:
                        log.warning("dropping the %s event of %s: %s", name, self.run_id, exc)
                    else:
                        await asyncio.sleep(0.2 * (attempt + 1))
            if done is not None and not done.done():
                done.set_result(None)

    async def close(self) -> None:
        """Publish everything queued, then stop the pump."""
        # Through the same thread-safe hand-off as the events, so the stop marker is queued after all of them.
        self.loop.call_soon_threadsafe(self._queue.put_nowait, None)
        with contextlib.suppress(Exception):
            await self._pump


class JobLifecycle:
    """One delivery of a job on this worker: its KV status, heartbeats, cancel flag and run events.

    ``update(**fields)`` (thread-safe) queues status fields (step, total_steps…) for the next heartbeat;
    ``cancel_requested`` turns true once a cancel was recorded in KV by any instance (checked every
    heartbeat) or :meth:`cancel` was called here; ``on_cancel`` callbacks run once when that happens.
    """

    def __init__(self, bus: Bus, envelope: JobEnvelope, *, service: str, worker: str | None,
                 previous: JobStatus | None, status_interval_s: float = 2.0) -> None:
        self.bus, self.envelope, self.service = bus, envelope, service
        self.status_interval_s = status_interval_s
        self.attempt = (previous.attempt if previous else 0) + 1
        self.status = JobStatus(
            job_id=envelope.job_id, run_id=envelope.run_id, job_type=envelope.job_type, service=service,
            state=JobState.RUNNING, attempt=self.attempt, worker=worker, heartbeat_at=utcnow(),
            created_at=previous.created_at if previous else envelope.submitted_at,
            cancel_requested=bool(previous and previous.cancel_requested))
        self.events: RunEvents | None = None
        self._pending: dict[str, Any] = {}
        self._pending_lock = threading.Lock()
        self._heartbeat: asyncio.Task[None] | None = None
        self._cancel_callbacks: list[Callable[[], None]] = []
        self._cancel_fired = False

    @property
    def job_id(self) -> str:
        return self.envelope.job_id

    @property
    def run_id(self) -> str:
        return self.envelope.run_id

    @property
    def cancel_requested(self) -> bool:
        return self.status.cancel_requested

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) once a cancel is requested; at once if it already was."""
        self._cancel_callbacks.append(callback)
        if self.status.cancel_requested:
            self._fire_cancel()

    def cancel(self) -> None:
        """Request a cancel from this process (the next heartbeat records it in KV)."""
        self.status = self.status.model_copy(update={"cancel_requested": True})
        self._fire_cancel()

    def _fire_cancel(self) -> None:
        if self._cancel_fired:
            return
        self._cancel_fired = True
        for callback in self._cancel_callbacks:
            callback()

    def update(self, **fields: Any) -> None:
        """Queue status fields for the next write (thread-safe; None values are ignored)."""
        with self._pending_lock:
            self._pending.update({k: v for k, v in fields.items() if v is not None})

    def emit(self, name: str, event_cls: type[RunEvent], **fields: Any) -> None:
        """Queue a run event (thread-safe). Only after :meth:`start`."""
        assert self.events is not None, "emit() after start()"
        self.events.emit(name, event_cls, **fields)

    async def write_status(self, **fields: Any) -> JobStatus:
        """Write the status now, merging a cancel that another instance recorded in KV."""
        current = await read_status(self.bus, self.job_id)
        cancel = self.status.cancel_requested or bool(current and current.cancel_requested)
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        now = utcnow()
        self.status = self.status.model_copy(update={**pending, **fields, "cancel_requested": cancel,
                                                     "heartbeat_at": now, "updated_at": now})
        await self.bus.kv_put(subjects.KV_JOB_STATE, self.job_id, self.status)
        if cancel:
            self._fire_cancel()
        return self.status

    async def start(self, **fields: Any) -> None:
        """Mark the job running (with ``fields``, e.g. ``total_steps``), open the run's event sequence and
        start heartbeating."""
        self.events = await RunEvents.open(self.bus, service=self.service, run_id=self.run_id, job_id=self.job_id)
        await self.write_status(state=JobState.RUNNING, **fields)
        self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.status_interval_s)
            try:
                await self.write_status()
            except Exception as exc:  # KV briefly unavailable: the next tick retries
                log.debug("status update of %s failed: %s", self.job_id, exc)

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()

    async def finish(self, state: JobState, *, error: str | None = None, summary: dict[str, Any] | None = None,
                     **fields: Any) -> None:
        """End the job: the ``finished`` event (after every queued event), then the terminal status."""
        self.stop_heartbeat()
        if self.events is None:
            self.events = await RunEvents.open(self.bus, service=self.service, run_id=self.run_id,
                                               job_id=self.job_id)
        self.events.emit("finished", RunFinished, state=state, summary=summary or {}, error=error)
        await self.events.close()
        await self.write_status(state=state, error=error if state != JobState.SUCCEEDED else None, **fields)

    async def requeue(self, reason: str) -> None:
        """Leave the job queued for redelivery (preempted: another worker resumes it from its checkpoint)."""
        self.stop_heartbeat()
        if self.events is not None:
            await self.events.close()
        with contextlib.suppress(Exception):
            await self.write_status(state=JobState.QUEUED, worker=None, error=reason)
