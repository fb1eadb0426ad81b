"""The trainer-torch service: consumes ``halo.job.trainer-torch.<method>`` and serves cancel and preview.

Run it with ``python -m halo_trainer_torch``. Each delivery runs in a worker thread (see :mod:`.jobs`); at
most ``max_concurrent_jobs`` train at once. On SIGTERM the running jobs are preempted: each stops after the
current step, writes a checkpoint, and is left unacknowledged so that a trainer (this one restarted, or
another) resumes it. A trainer that dies outright stops heartbeating; the job is redelivered after
``ack_wait_s`` and resumes from its last complete checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from halo_bus import subjects
from halo_bus.api import JobDelivery
from halo_common.backend import detect_backend
from halo_common.errors import NotFound
from halo_runtime import Service
from halo_runtime.jobs import admit, request_cancel
from halo_schemas.jobs import JobEnvelope, JobRef, JobStatus
from halo_schemas.training import PreviewRequest, PreviewResult

from halo_trainer_torch import __version__
from halo_trainer_torch.core.policy import spec_guard
from halo_trainer_torch.core.preview import preview_job
from halo_trainer_torch.core.runner import Preempted
from halo_trainer_torch.jobs import JobExecution, Meters
from halo_trainer_torch.settings import TrainerTorchSettings

log = logging.getLogger("halo_trainer_torch")

METHODS = ("sft", "dpo", "orpo", "rm", "grpo", "raft")


class TrainerTorch(Service):
    name = "trainer-torch"
    version = __version__
    description = "SFT, DPO, ORPO and reward-model training on torch backends"
    settings_cls = TrainerTorchSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings: TrainerTorchSettings = self.settings  # type: ignore[assignment]
        self.tsettings = settings
        self.running: dict[str, JobExecution] = {}
        self.meters = Meters(self.telemetry.registry if self.telemetry else None)
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)
        self.guard = spec_guard(settings)  # this worker's own policy, whatever the gateway decided

    async def setup(self) -> None:
        self.tsettings.paths.ensure()
        await self.endpoint("cancel", self.on_cancel, JobRef)
        await self.endpoint("preview", self.on_preview, PreviewRequest)
        types = [t.strip() for t in self.tsettings.job_types.split(",") if t.strip()]
        for job_type in types:
            if job_type not in METHODS:
                raise ValueError(f"HALO_TRAINER_TORCH_JOB_TYPES: unknown job type {job_type!r}; known: {', '.join(METHODS)}")
            await self.track(await self.bus.consume_jobs(
                subjects.job(self.name, job_type), subjects.job_consumer_name(self.name, job_type), self.on_job,
                JobEnvelope, ack_wait_s=self.tsettings.ack_wait_s, max_deliver=self.tsettings.max_deliver,
                concurrency=self.tsettings.max_concurrent_jobs,
            ))

    def checks(self) -> dict[str, str]:
        return {"backend": "ok" if detect_backend() != "mlx" else "mlx: use trainer-mlx"}

    @property
    def instance_id(self) -> str:
        return self.registration.id if self.registration else "trainer-torch"

    # ---- jobs ---------------------------------------------------------------------------------
    async def on_job(self, delivery: JobDelivery[JobEnvelope]) -> None:
        env = delivery.message
        # Hold the delivery (the bus keeps heartbeating it) while the job is alive elsewhere or here; a
        # duplicate of a finished job is acknowledged, an unknown or cancelled one closed.
        fresh_s = min(max(3 * self.tsettings.status_interval_s, 5.0), 0.8 * self.tsettings.ack_wait_s)
        admission = await admit(self.bus, env, service=self.name, worker=self.instance_id, running=self.running,
                                fresh_s=fresh_s, known_types=METHODS, poll_s=self.tsettings.status_interval_s)
        if admission is None:
            return
        async with self._slots:
            # The slot may have taken a while: the job may have been cancelled or finished meanwhile.
            admission = await admit(self.bus, env, service=self.name, worker=self.instance_id, running=self.running,
                                    fresh_s=fresh_s, known_types=METHODS, poll_s=self.tsettings.status_interval_s)
            if admission is None:
                return
            execution = JobExecution(self.bus, env, runs_dir=self.tsettings.paths.runs_dir, worker=self.instance_id,
                                     status_interval_s=self.tsettings.status_interval_s, previous=admission.previous,
                                     meters=self.meters, guard=self.guard)
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
        return await asyncio.to_thread(preview_job, req.method, req.spec, req.num_samples, self.guard)

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
