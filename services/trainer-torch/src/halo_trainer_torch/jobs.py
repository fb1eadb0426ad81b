"""Running one job delivery: the bridge between the bus and :func:`halo_trainer_torch.core.runner.run_job`.

The recipe runs in a worker thread (torch is synchronous). Everything it reports goes through a
:class:`BusReporter` into the shared :class:`~halo_runtime.jobs.JobLifecycle`, which publishes the run's
events in order (one strictly increasing ``seq`` per run, continued after a redelivery), heartbeats the
job's :class:`JobStatus` in the KV bucket and picks up a cancel requested through any trainer instance.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from halo_bus import Bus
from halo_common.backend import detect_backend
from halo_runtime.jobs import JobLifecycle
from halo_schemas.events import RunArtifactAdded, RunCheckpointed, RunProgressed, RunStarted
from halo_schemas.jobs import JobEnvelope, JobStatus
from halo_schemas.training import TrainingSummary, TrainSpecBase
from prometheus_client import CollectorRegistry, Counter, Gauge

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
    """Turns recipe callbacks (from the training thread) into the run's events and status updates."""

    def __init__(self, job: JobLifecycle, *, method: str, spec: dict[str, Any], base_model: str | None,
                 backend: str | None, meters: Meters | None = None) -> None:
        self.job, self.method = job, method
        self.spec, self.base_model, self.backend = spec, base_model, backend
        self.meters = meters or Meters()
        self._counted_step: int | None = None
        self._counted_tokens: float | None = None

    # ---- Reporter ---------------------------------------------------------------------------
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


class JobExecution:
    """One delivery of a training job on this worker: the recipe in a thread, the lifecycle on the loop."""

    def __init__(self, bus: Bus, envelope: JobEnvelope, *, runs_dir: Path, worker: str, status_interval_s: float,
                 previous: JobStatus | None, meters: Meters | None = None,
                 guard: Callable[[TrainSpecBase], None] | None = None) -> None:
        self.env = envelope
        self.guard = guard  # the worker's policy (core/policy.py), applied before anything is loaded
        self.meters = meters or Meters()
        self.run_dir = runs_dir / envelope.run_id
        self.control = JobControl()
        self.job = JobLifecycle(bus, envelope, service=SERVICE, worker=worker, previous=previous,
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
        summary = run_job(self.env.job_type, self.env.spec, self.run_dir, reporter=self.reporter, control=self.control,
                          run_id=self.env.run_id, job_id=self.env.job_id, attempt=self.attempt, guard=self.guard)
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
