"""A trainer service on the bus: job deliveries run a recipe in a worker thread, their events and status go
through the shared :class:`~halo_runtime.jobs.JobLifecycle`. trainer-torch and trainer-mlx are both this::

    class TrainerMlx(TrainerService):
        name = "trainer-mlx"
        methods = ("sft", "dpo", ...)
        settings_cls = TrainerMlxSettings          # a TrainerSettings subclass (HALO_TRAINER_MLX_*)

        def train(self, execution: TrainingJobExecution) -> TrainingSummary:   # runs in a worker thread
            return run_job(execution.env.job_type, execution.env.spec, execution.run_dir,
                           reporter=execution.reporter, control=execution.control, ...)

        def preview(self, req: PreviewRequest) -> PreviewResult: ...            # runs in a worker thread

The service serves ``cancel`` and ``preview`` (``halo.rpc.<service>.<verb>``) and consumes
``halo.job.<service>.<method>`` for each method in its ``job_types`` setting. On SIGTERM the running jobs are
preempted: each stops after its current step, writes a checkpoint and is left unacknowledged so that a trainer
resumes it. A trainer that dies outright stops heartbeating; the job is redelivered after ``ack_wait_s`` and
resumes from its last complete checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any

from halo_bus import Bus, subjects
from halo_bus.api import JobDelivery
from halo_common.backend import detect_backend
from halo_common.errors import NotFound
from halo_common.settings import HaloSettings
from halo_runtime import Service
from halo_runtime.jobs import JobLifecycle, admit, request_cancel
from halo_schemas.events import RunArtifactAdded, RunCheckpointed, RunProgressed, RunStarted
from halo_schemas.jobs import JobEnvelope, JobRef, JobStatus
from halo_schemas.training import PreviewRequest, PreviewResult, TrainingSummary
from pydantic import Field

from halo_training.metrics import Meters
from halo_training.reporting import JobControl, Reporter, artifact_identity
from halo_training.runs import Preempted

log = logging.getLogger("halo_training.jobs")


class TrainerSettings(HaloSettings):
    """Settings every trainer service shares; a service subclass sets its ``env_prefix`` (HALO_<SVC>_)."""

    ack_wait_s: float = Field(
        default=15.0, gt=0, le=600,
        description="Job lease: a job whose worker stops heartbeating is redelivered (resumed) after this many seconds.",
    )
    max_deliver: int = Field(default=10, ge=1, description="Deliveries (first run + resumes) before a job is dropped.")
    max_concurrent_jobs: int = Field(default=1, ge=1, le=64, description="Jobs this process trains at the same time.")
    status_interval_s: float = Field(
        default=2.0, gt=0, description="Seconds between job-state KV updates (heartbeat, step, cancel polling)."
    )
    job_types: str = Field(default="sft", description="Comma-separated job types this instance consumes.")


class BusReporter(Reporter):
    """Turns recipe callbacks (from the training thread) into the run's events and status updates."""

    def __init__(self, job: JobLifecycle, *, method: str, spec: dict[str, Any], base_model: str | None,
                 backend: str | None, meters: Meters | None = None) -> None:
        self.job, self.method = job, method
        self.spec, self.base_model, self.backend = spec, base_model, backend
        self.meters = meters or Meters()
        self._counted_step: int | None = None
        self._counted_tokens: float | None = None

    def started(self, *, total_steps: int | None, resumed_from_step: int | None, info: dict[str, Any]) -> None:
        self.job.update(total_steps=total_steps, step=resumed_from_step or 0)
        self._counted_step = resumed_from_step or 0
        self._counted_tokens = float(info.get("tokens") or 0)
        self.job.emit("started", RunStarted, method=self.method, base_model=self.base_model, backend=self.backend,
                      spec=self.spec, total_steps=total_steps, resumed_from_step=resumed_from_step)

    def announce(self) -> None:
        """RunStarted without training details, for a job that ended before its recipe started (refused spec,
        bad data, missing model): the registry learns the run's method, name and model from it."""
        if self._counted_step is None:
            self.job.emit("started", RunStarted, method=self.method, base_model=self.base_model,
                          backend=self.backend, spec=self.spec)

    def progress(self, step: int, total_steps: int | None, metrics: dict[str, float]) -> None:
        self.job.update(step=step, total_steps=total_steps)
        # Counters grow by what happened since the last report of this attempt (a resume starts from its step).
        if self._counted_step is not None and step > self._counted_step:
            self.meters.steps.labels(self.method).inc(step - self._counted_step)
        tokens = metrics.get("tokens")
        if tokens is not None and self._counted_tokens is not None and tokens > self._counted_tokens:
            self.meters.tokens.labels(self.method).inc(tokens - self._counted_tokens)
        self._counted_step = max(step, self._counted_step or 0)
        if tokens is not None:
            self._counted_tokens = max(tokens, self._counted_tokens or 0.0)
        self.job.emit("progressed", RunProgressed, step=step, total_steps=total_steps, metrics=metrics)

    def checkpointed(self, step: int, path: str) -> None:
        self.meters.checkpoints.labels(self.method).inc()
        self.job.emit("checkpointed", RunCheckpointed, step=step, path=path)

    def artifact(self, kind: str, fmt: str, path: str, step: int | None = None) -> None:
        sha, size = artifact_identity(Path(path))
        self.job.emit("artifact-added", RunArtifactAdded, kind=kind, format=fmt, path=path, sha256=sha,
                      size_bytes=size, step=step)


class TrainingJobExecution:
    """One delivery of a training job on this worker: the recipe in a thread, the lifecycle on the loop.

    ``train(execution)`` is called in a worker thread and returns the summary; it raises
    :class:`~halo_training.runs.Preempted` after writing a checkpoint when :attr:`control` was preempted.
    """

    def __init__(self, bus: Bus, envelope: JobEnvelope, *, service: str, train: Any, runs_dir: Path, worker: str,
                 status_interval_s: float, previous: JobStatus | None, meters: Meters | None = None) -> None:
        self.env = envelope
        self.service = service
        self._train_fn = train
        self.meters = meters or Meters()
        self.run_dir = runs_dir / envelope.run_id
        self.control = JobControl()
        self.job = JobLifecycle(bus, envelope, service=service, worker=worker, previous=previous,
                                status_interval_s=status_interval_s)
        self.job.on_cancel(self.control.cancel)
        self.future: asyncio.Future[TrainingSummary] | None = None
        self.reporter: BusReporter | None = None

    @property
    def attempt(self) -> int:
        return self.job.attempt

    async def run(self) -> TrainingSummary | None:
        """Train; publish events; leave the final status in KV. Returns None when preempted."""
        spec = self.env.spec
        self.reporter = BusReporter(
            self.job, method=self.env.job_type, spec=spec,
            base_model=spec.get("model") if isinstance(spec, dict) else None, backend=str(detect_backend()),
            meters=self.meters)
        await self.job.start()
        self.future = asyncio.get_running_loop().run_in_executor(None, self._train)
        try:
            summary = await asyncio.shield(self.future)
        except asyncio.CancelledError:
            raise  # shutting down: drain() preempts the thread and waits for it (status keeps heartbeating)
        except Preempted:
            await self.preempted()
            return None
        except BaseException:
            self.job.stop_heartbeat()
            raise
        await self.finish(summary)
        return summary

    def _train(self) -> TrainingSummary:
        t0 = time.monotonic()
        summary = self._train_fn(self)
        log.info("job %s (%s) ended %s after %.1fs", self.env.job_id, self.env.job_type, summary.state,
                 time.monotonic() - t0)
        return summary

    async def finish(self, summary: TrainingSummary) -> None:
        self.meters.jobs.labels(self.env.job_type, str(summary.state)).inc()
        if self.reporter is not None:
            self.reporter.announce()
        await self.job.finish(summary.state, error=summary.failure_reason, summary=summary.model_dump(mode="json"),
                              step=summary.steps)

    async def preempted(self) -> None:
        """Leave the job queued for redelivery: another worker resumes it from the checkpoint just written."""
        await self.job.requeue("preempted; will resume from checkpoint")


class TrainerService(Service):
    """Base of the trainer services: job consumers per method, ``cancel`` and ``preview`` RPCs, drain on stop.

    Subclasses set ``name``, ``version``, ``description``, ``settings_cls`` (a :class:`TrainerSettings`) and
    ``methods``, and implement :meth:`train` and :meth:`preview` (both run in a worker thread).
    """

    methods: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings: TrainerSettings = self.settings  # type: ignore[assignment]
        self.tsettings = settings
        self.running: dict[str, TrainingJobExecution] = {}
        self.meters = Meters(self.telemetry.registry if self.telemetry else None)
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)

    @abstractmethod
    def train(self, execution: TrainingJobExecution) -> TrainingSummary:
        """Run the job of ``execution`` to its end (worker thread); raise Preempted to leave it queued."""

    @abstractmethod
    def preview(self, req: PreviewRequest) -> PreviewResult:
        """Dry run of a spec (worker thread)."""

    async def setup(self) -> None:
        self.tsettings.paths.ensure()
        await self.endpoint("cancel", self.on_cancel, JobRef)
        await self.endpoint("preview", self.on_preview, PreviewRequest)
        prefix = self.settings_cls.model_config.get("env_prefix", "HALO_")
        for job_type in [t.strip() for t in self.tsettings.job_types.split(",") if t.strip()]:
            if job_type not in self.methods:
                raise ValueError(f"{prefix}JOB_TYPES: unknown job type {job_type!r}; known: {', '.join(self.methods)}")
            await self.track(await self.bus.consume_jobs(
                subjects.job(self.name, job_type), subjects.job_consumer_name(self.name, job_type), self.on_job,
                JobEnvelope, ack_wait_s=self.tsettings.ack_wait_s, max_deliver=self.tsettings.max_deliver,
                concurrency=self.tsettings.max_concurrent_jobs,
            ))

    @property
    def instance_id(self) -> str:
        return self.registration.id if self.registration else self.name

    async def _admit(self, env: JobEnvelope) -> Any:
        fresh_s = min(max(3 * self.tsettings.status_interval_s, 5.0), 0.8 * self.tsettings.ack_wait_s)
        return await admit(self.bus, env, service=self.name, worker=self.instance_id, running=self.running,
                           fresh_s=fresh_s, known_types=self.methods, poll_s=self.tsettings.status_interval_s)

    async def on_job(self, delivery: JobDelivery[JobEnvelope]) -> None:
        env = delivery.message
        # Hold the delivery (the bus keeps heartbeating it) while the job is alive elsewhere or here; a
        # duplicate of a finished job is acknowledged, an unknown or cancelled one closed.
        if await self._admit(env) is None:
            return
        async with self._slots:
            # The slot may have taken a while: the job may have been cancelled or finished meanwhile.
            admission = await self._admit(env)
            if admission is None:
                return
            execution = TrainingJobExecution(
                self.bus, env, service=self.name, train=self.train, runs_dir=self.tsettings.paths.runs_dir,
                worker=self.instance_id, status_interval_s=self.tsettings.status_interval_s,
                previous=admission.previous, meters=self.meters)
            self.running[env.job_id] = execution
            self.meters.running.inc()
            try:
                summary = await execution.run()
            finally:
                if execution.future is None or execution.future.done():
                    self.running.pop(env.job_id, None)
                    self.meters.running.dec()
            if summary is None:  # preempted: nak, so it is redelivered and resumed from its checkpoint
                raise RuntimeError(f"job {env.job_id} preempted; leaving it for redelivery")

    async def on_cancel(self, req: JobRef) -> JobStatus:
        running = self.running.get(req.job_id)
        if running is not None:
            running.job.cancel()
        status = await request_cancel(self.bus, req.job_id)
        if status is None:
            raise NotFound(f"no job {req.job_id!r}", param="job_id")
        return status

    async def on_preview(self, req: PreviewRequest) -> PreviewResult:
        return await asyncio.to_thread(self.preview, req)

    async def drain(self) -> None:
        """Preempt running jobs: each stops after its current step with a checkpoint, and stays queued."""
        for execution in list(self.running.values()):
            execution.control.preempt()
        for job_id, execution in list(self.running.items()):
            if execution.future is None:
                continue
            try:
                await execution.future
            except Preempted:
                await execution.preempted()
            except Exception:
                log.exception("job %s failed while draining", job_id)
            else:
                # It finished (or was cancelled) before the stop took effect: report it normally.
                with contextlib.suppress(Exception):
                    await execution.finish(execution.future.result())
            self.running.pop(job_id, None)
            self.meters.running.dec()
