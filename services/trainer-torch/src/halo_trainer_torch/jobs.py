"""Running one job delivery: the bridge between the bus and :func:`halo_trainer_torch.core.runner.run_job`.

The recipe runs in a worker thread (torch is synchronous). Everything it reports goes through a
:class:`BusReporter`, which hands events to the event loop; one pump task publishes them in order with a
per-run, strictly increasing ``seq`` and a ``msg_id`` per event (``<run_id>.<seq>``) for deduplication.
A status task refreshes the job's :class:`JobStatus` in the KV bucket (heartbeat, step) and picks up a
cancel requested through any trainer instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from halo_bus import Bus, subjects
from halo_common.backend import detect_backend
from halo_schemas.base import utcnow
from halo_schemas.events import RunArtifactAdded, RunCheckpointed, RunFinished, RunProgressed, RunStarted
from halo_schemas.jobs import JobEnvelope, JobState, JobStatus
from halo_schemas.training import TrainingSummary
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel

from halo_trainer_torch.core.components.hooks import JobControl, Reporter
from halo_trainer_torch.core.runner import SERVICE, Preempted, run_job

log = logging.getLogger("halo_trainer_torch.jobs")

#: Artifacts larger than this get no content hash (hashing tens of GB would hold the job up for minutes).
HASH_LIMIT_BYTES = 1 << 30


def artifact_identity(path: Path) -> tuple[str | None, int]:
    """(sha256 over the files' names and contents, total size); no hash above HASH_LIMIT_BYTES."""
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    size = sum(f.stat().st_size for f in files)
    if size > HASH_LIMIT_BYTES:
        return None, size
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest(), size


async def last_seq(bus: Bus, run_id: str) -> int:
    """Highest ``seq`` already published for the run (so a resumed run continues the sequence)."""
    try:
        records = await bus.replay(subjects.run_events_filter(run_id))
    except Exception:  # replay is best effort; a fresh sequence base below still increases
        return -1
    return max((int(getattr(r.message, "seq", -1)) for r in records), default=-1)


class Meters:
    """The service's Prometheus metrics (docs/metrics.md, trainer-torch section)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry or CollectorRegistry()
        self.jobs = Counter("halo_trainer_jobs_total", "Training jobs ended, by outcome", ["method", "outcome"],
                            registry=registry)
        self.running = Gauge("halo_trainer_jobs_running", "Training jobs running in this process", registry=registry)
        self.steps = Counter("halo_trainer_optimizer_steps_total", "Optimizer steps completed", ["method"],
                             registry=registry)
        self.tokens = Counter("halo_trainer_tokens_total", "Non-padding tokens trained", ["method"], registry=registry)
        self.checkpoints = Counter("halo_trainer_checkpoints_total", "Complete checkpoints written", ["method"],
                                   registry=registry)


class BusReporter(Reporter):
    """Turns recipe callbacks (from any thread) into ordered run events on the bus."""

    def __init__(self, bus: Bus, loop: asyncio.AbstractEventLoop, *, run_id: str, job_id: str, method: str,
                 spec: dict[str, Any], base_model: str | None, backend: str | None, first_seq: int,
                 on_status: Callable[[dict[str, Any]], None], meters: Meters | None = None) -> None:
        self.bus, self.loop = bus, loop
        self.run_id, self.job_id, self.method = run_id, job_id, method
        self.spec, self.base_model, self.backend = spec, base_model, backend
        self._seq = first_seq
        self._lock = threading.Lock()
        self._queue: asyncio.Queue[tuple[str, BaseModel] | None] = asyncio.Queue()
        self._on_status = on_status
        self.meters = meters or Meters()
        self._counted_step: int | None = None
        self._counted_tokens: float | None = None
        self._pump = loop.create_task(self._run_pump())

    def _emit(self, name: str, make: Callable[[int], BaseModel]) -> None:
        # seq is taken and the event queued under one lock, so queue order == seq order.
        with self._lock:
            seq = self._seq
            self._seq += 1
            msg = make(seq)
            self.loop.call_soon_threadsafe(self._queue.put_nowait, (name, msg))

    def _base(self, seq: int) -> dict[str, Any]:
        return {"run_id": self.run_id, "job_id": self.job_id, "service": SERVICE, "seq": seq}

    # ---- Reporter ---------------------------------------------------------------------------
    def started(self, *, total_steps: int | None, resumed_from_step: int | None, info: dict[str, Any]) -> None:
        self._on_status({"total_steps": total_steps, "step": resumed_from_step or 0})
        self._counted_step = resumed_from_step or 0
        self._counted_tokens = float(info.get("tokens") or 0)
        self._emit("started", lambda s: RunStarted(
            **self._base(s), method=self.method, base_model=self.base_model, backend=self.backend, spec=self.spec,
            total_steps=total_steps, resumed_from_step=resumed_from_step))

    def progress(self, step: int, total_steps: int | None, metrics: dict[str, float]) -> None:
        self._on_status({"step": step, "total_steps": total_steps})
        # Counters grow by what happened since the last report of this attempt (a resume starts from its step).
        if self._counted_step is not None and step > self._counted_step:
            self.meters.steps.labels(self.method).inc(step - self._counted_step)
        tokens = metrics.get("tokens")
        if tokens is not None and self._counted_tokens is not None and tokens > self._counted_tokens:
            self.meters.tokens.labels(self.method).inc(tokens - self._counted_tokens)
        self._counted_step = max(step, self._counted_step or 0)
        if tokens is not None:
            self._counted_tokens = max(tokens, self._counted_tokens or 0.0)
        self._emit("progressed", lambda s: RunProgressed(**self._base(s), step=step, total_steps=total_steps,
                                                         metrics=metrics))

    def checkpointed(self, step: int, path: str) -> None:
        self.meters.checkpoints.labels(self.method).inc()
        self._emit("checkpointed", lambda s: RunCheckpointed(**self._base(s), step=step, path=path))

    def artifact(self, kind: str, fmt: str, path: str, step: int | None = None) -> None:
        sha, size = artifact_identity(Path(path))
        self._emit("artifact-added", lambda s: RunArtifactAdded(**self._base(s), kind=kind, format=fmt, path=path,
                                                                sha256=sha, size_bytes=size, step=step))

    def finished(self, state: JobState, summary: TrainingSummary | None, error: str | None) -> None:
        self._emit("finished", lambda s: RunFinished(
            **self._base(s), state=state, summary=summary.model_dump(mode="json") if summary else {}, error=error))

    # ---- publishing ---------------------------------------------------------------------------
    async def _run_pump(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            name, msg = item
            subject = subjects.run_event(SERVICE, self.run_id, name)
            msg_id = f"{self.run_id}.{msg.seq}"  # type: ignore[attr-defined]
            for attempt in range(5):
                try:
                    await self.bus.publish_event(subject, msg, msg_id=msg_id)
                    break
                except Exception as exc:  # NATS briefly away: retry, then drop (metrics.jsonl keeps the data)
                    if attempt == 4:
                        log.warning("dropping %s event of %s: %s", name, self.run_id, exc)
                    else:
                        await asyncio.sleep(0.2 * (attempt + 1))

    async def close(self) -> None:
        """Publish everything queued, then stop."""
        # Through the same thread-safe hand-off as the events, so the stop marker is queued after all of them.
        self.loop.call_soon_threadsafe(self._queue.put_nowait, None)
        with contextlib.suppress(Exception):
            await self._pump


class JobExecution:
    """One delivery of a training job on this worker."""

    def __init__(self, bus: Bus, envelope: JobEnvelope, *, runs_dir: Path, worker: str, status_interval_s: float,
                 previous: JobStatus | None, meters: Meters | None = None) -> None:
        self.bus, self.env = bus, envelope
        self.meters = meters or Meters()
        self.run_dir = runs_dir / envelope.run_id
        self.worker, self.status_interval_s = worker, status_interval_s
        self.control = JobControl()
        self.attempt = (previous.attempt if previous else 0) + 1
        self.status = JobStatus(
            job_id=envelope.job_id, run_id=envelope.run_id, job_type=envelope.job_type, service=SERVICE,
            state=JobState.RUNNING, attempt=self.attempt, worker=worker, heartbeat_at=utcnow(),
            created_at=previous.created_at if previous else utcnow(),
            cancel_requested=bool(previous and previous.cancel_requested),
        )
        self.future: asyncio.Future[TrainingSummary] | None = None
        self.reporter: BusReporter | None = None
        self._status_updates: dict[str, Any] = {}
        self._status_task: asyncio.Task[None] | None = None

    def _queue_status(self, update: dict[str, Any]) -> None:
        self._status_updates.update({k: v for k, v in update.items() if v is not None})

    async def _put_status(self, **update: Any) -> None:
        current = await self.bus.kv_get(subjects.KV_JOB_STATE, self.env.job_id, JobStatus)
        cancel = self.status.cancel_requested or bool(current and current.cancel_requested)
        if cancel and not self.control.cancelled:
            self.control.cancel()
        self.status = self.status.model_copy(update={**self._status_updates, **update, "cancel_requested": cancel,
                                                     "heartbeat_at": utcnow(), "updated_at": utcnow()})
        self._status_updates = {}
        await self.bus.kv_put(subjects.KV_JOB_STATE, self.env.job_id, self.status)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.status_interval_s)
            try:
                await self._put_status()
            except Exception as exc:  # KV briefly unavailable: the next tick retries
                log.debug("status update of %s failed: %s", self.env.job_id, exc)

    async def run(self) -> TrainingSummary | None:
        """Train; publish events; leave the final status in KV. Returns None when preempted."""
        loop = asyncio.get_running_loop()
        env = self.env
        spec = env.spec
        self.reporter = BusReporter(
            self.bus, loop, run_id=env.run_id, job_id=env.job_id, method=env.job_type, spec=spec,
            base_model=spec.get("model") if isinstance(spec, dict) else None, backend=str(detect_backend()),
            first_seq=await last_seq(self.bus, env.run_id) + 1, on_status=self._queue_status, meters=self.meters,
        )
        await self._put_status()
        self._status_task = loop.create_task(self._status_loop())
        self.future = loop.run_in_executor(None, self._train)
        try:
            summary = await asyncio.shield(self.future)
        except asyncio.CancelledError:
            raise  # shutting down: drain() preempts the thread and waits for it (status keeps heartbeating)
        except Preempted:
            await self.preempted()
            return None
        except BaseException:
            self._stop_status()
            raise
        await self.finish(summary)
        return summary

    def _stop_status(self) -> None:
        if self._status_task is not None:
            self._status_task.cancel()

    def _train(self) -> TrainingSummary:
        t0 = time.monotonic()
        summary = run_job(self.env.job_type, self.env.spec, self.run_dir, reporter=self.reporter, control=self.control,
                          run_id=self.env.run_id, job_id=self.env.job_id, attempt=self.attempt)
        log.info("job %s (%s) ended %s after %.1fs", self.env.job_id, self.env.job_type, summary.state,
                 time.monotonic() - t0)
        return summary

    async def finish(self, summary: TrainingSummary) -> None:
        self._stop_status()
        self.meters.jobs.labels(self.env.job_type, str(summary.state)).inc()
        assert self.reporter is not None
        self.reporter.finished(summary.state, summary, summary.failure_reason)
        await self.reporter.close()
        await self._put_status(state=summary.state, step=summary.steps,
                               error=summary.failure_reason if summary.state != JobState.SUCCEEDED else None)

    async def preempted(self) -> None:
        """Leave the job queued for redelivery: another worker resumes it from the checkpoint just written."""
        self._stop_status()
        if self.reporter is not None:
            await self.reporter.close()
        with contextlib.suppress(Exception):
            await self._put_status(state=JobState.QUEUED, worker=None, error="preempted; will resume from checkpoint")


async def finish_without_running(bus: Bus, envelope: JobEnvelope, previous: JobStatus | None, state: JobState,
                                 error: str | None) -> None:
    """Close a job that will not run (cancelled while queued, unknown type): status and a RunFinished event."""
    seq = await last_seq(bus, envelope.run_id) + 1
    await bus.publish_event(
        subjects.run_event(SERVICE, envelope.run_id, "finished"),
        RunFinished(run_id=envelope.run_id, job_id=envelope.job_id, service=SERVICE, seq=seq, state=state, error=error),
        msg_id=f"{envelope.run_id}.{seq}",
    )
    status = JobStatus(job_id=envelope.job_id, run_id=envelope.run_id, job_type=envelope.job_type, service=SERVICE,
                       state=state, attempt=previous.attempt if previous else 0, error=error,
                       cancel_requested=bool(previous and previous.cancel_requested),
                       created_at=previous.created_at if previous else utcnow())
    await bus.kv_put(subjects.KV_JOB_STATE, envelope.job_id, status)
