"""Bus handlers of the rollout service: parse, call core on the model thread, map.

* ``generate`` (RPC): small batches; more than ``max_rpc_samples`` completions is refused with a
  pointer to the job.
* ``load`` (RPC): load a model into the cache, or re-read its weights from disk (``reload``).
* ``run_job``: a :class:`~halo_schemas.rollout.RolloutJobSpec` from ``halo.job.rollout.generate``;
  results go to ``<run dir>/samples.jsonl``; job state in the ``HALO_JOB_STATE`` KV bucket and
  run events (``started``, ``progressed``, ``artifact-added``, ``finished``) on the bus.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from halo_bus.api import JobDelivery
from halo_common.errors import BadRequest, HaloError
from halo_runtime.jobs import JobLifecycle, admit, finish_without_running
from halo_schemas.base import describe_validation_error
from halo_schemas.events import RunArtifactAdded, RunProgressed, RunStarted
from halo_schemas.jobs import JobEnvelope, JobState
from halo_schemas.rollout import RolloutJobSpec, RolloutLoaded, RolloutLoadRequest, RolloutRequest, RolloutResult
from pydantic import ValidationError

from halo_rollout.core.jobs import JobProgress, completed_lines, run_rollout_job, summarize

if TYPE_CHECKING:
    from halo_rollout.service import Rollout

log = logging.getLogger("halo_rollout")


def _model_of(svc: Rollout, model: str | None) -> str:
    model = model or svc.settings.default_model
    if not model:
        raise BadRequest("no model given and HALO_ROLLOUT_DEFAULT_MODEL is not set", param="model")
    return model


async def generate(svc: Rollout, req: RolloutRequest) -> RolloutResult:
    model = _model_of(svc, req.model)
    backend = svc.backend_for(req.backend)
    total = sum((r.params or req.params).n for r in req.requests)
    if total > svc.settings.max_rpc_samples:
        raise BadRequest(
            f"{total} completions requested; one RPC allows {svc.settings.max_rpc_samples} "
            "(HALO_ROLLOUT_MAX_RPC_SAMPLES): submit a rollout job (POST /api/v1/rollout/jobs) for large batches",
            param="requests")

    def work() -> RolloutResult:
        entry, action = svc.cache.get(backend, model, req.adapter)
        _count_load(svc, backend, action, entry.load_s)
        be = entry.backend
        start = time.perf_counter()
        results = be.generate(req.requests, req.params)
        elapsed = time.perf_counter() - start
        return RolloutResult(
            model=model, adapter=req.adapter, backend=be.name,
            weights_version=be.weights_version, weights_fingerprint=be.weights_fingerprint(),
            results=results, num_samples=sum(len(r.completions) for r in results),
            num_tokens=sum(c.num_tokens for r in results for c in r.completions), elapsed_s=elapsed,
        )

    result = await svc.in_model_thread(work)
    svc.metrics.samples.labels(result.backend, "rpc").inc(result.num_samples)
    svc.metrics.tokens.labels(result.backend).inc(result.num_tokens)
    svc.metrics.generate_seconds.labels(result.backend).observe(result.elapsed_s)
    return result


async def load(svc: Rollout, req: RolloutLoadRequest) -> RolloutLoaded:
    model = _model_of(svc, req.model)
    backend = svc.backend_for(req.backend)

    def work() -> RolloutLoaded:
        entry, action = svc.cache.get(backend, model, req.adapter, reload=req.reload)
        _count_load(svc, backend, action, entry.load_s)
        return RolloutLoaded(
            model=model, adapter=req.adapter, backend=entry.backend.name,
            weights_version=entry.backend.weights_version, weights_fingerprint=entry.backend.weights_fingerprint(),
            action=action,  # type: ignore[arg-type]
            load_s=entry.load_s if action != "cached" else 0.0, cached=svc.cache.labels(),
        )

    return await svc.in_model_thread(work)


def _count_load(svc: Rollout, backend: str, action: str, seconds: float) -> None:
    if action != "cached":
        svc.metrics.model_loads.labels(backend, action).inc()
        svc.metrics.load_seconds.labels(backend).observe(seconds)
    svc.metrics.models_loaded.set(len(svc.cache))


# ---- the job -------------------------------------------------------------------------------------
async def run_job(svc: Rollout, delivery: JobDelivery[JobEnvelope]) -> None:
    """One rollout job: validate, generate chunk by chunk into the run dir, report, ack.

    The status, heartbeats, cancel flag and the run's event sequence come from the shared
    :class:`~halo_runtime.jobs.JobLifecycle`; a redelivery resumes after the lines already written.
    """
    env = delivery.message
    worker = svc.registration.id if svc.registration else None
    admission = await admit(svc.bus, env, service="rollout", worker=worker or "rollout", running=(),
                            fresh_s=0.8 * svc.settings.job_ack_wait_s, known_types=("generate",))
    if admission is None:
        return
    try:
        spec = RolloutJobSpec.model_validate(env.spec)
    except ValidationError as exc:
        error = describe_validation_error(exc, what="rollout job spec")
        await finish_without_running(svc.bus, env, service="rollout", previous=admission.previous,
                                     state=JobState.FAILED, error=error)
        raise BadRequest(error) from None
    job = JobLifecycle(svc.bus, env, service="rollout", worker=worker, previous=admission.previous,
                       status_interval_s=max(1.0, min(5.0, svc.settings.job_ack_wait_s / 4)))
    out_path, resumed = await asyncio.to_thread(_prepare_run_dir, svc, env, spec, delivery.num_delivered)
    backend = svc.backend_for(spec.backend)
    started = time.monotonic()
    await job.start()
    job.emit("started", RunStarted, method="rollout", base_model=spec.model, backend=backend,
             spec=spec.model_dump(mode="json"), resumed_from_step=resumed)
    last_progress = [0.0]

    def on_progress(p: JobProgress) -> None:  # model thread
        job.update(step=p.done, total_steps=p.total)
        now = time.monotonic()
        if now - last_progress[0] < svc.settings.progress_interval_s and p.done < p.total:
            return
        last_progress[0] = now
        metrics = {"prompts_done": float(p.done), "samples": float(p.samples), "tokens": float(p.tokens),
                   "samples_per_s": p.samples_per_s}
        job.emit("progressed", RunProgressed, step=p.done, total_steps=p.total, metrics=metrics)

    def cancelled() -> bool:
        return svc.stopping_jobs.is_set() or job.cancel_requested

    def work() -> tuple[JobProgress, str]:
        entry, action = svc.cache.get(backend, spec.model, spec.adapter)
        _count_load(svc, backend, action, entry.load_s)
        progress = run_rollout_job(spec, entry.backend, out_path, on_progress, cancelled)
        return progress, entry.backend.name

    def summary(**fields: Any) -> dict[str, Any]:
        return {**fields, "duration_s": time.monotonic() - started}

    try:
        progress, backend_name = await svc.in_model_thread(work)
    except HaloError as exc:
        # Deterministic failures (bad model, bad prompts file): retrying cannot help; record and ack.
        await job.finish(JobState.FAILED, error=str(exc), summary=summary())
        return
    except Exception as exc:
        log.exception("rollout job %s failed", env.job_id)
        await job.finish(JobState.FAILED, error=f"{type(exc).__name__}: {exc}", summary=summary())
        return
    svc.metrics.samples.labels(backend_name, "job").inc(progress.samples)
    svc.metrics.tokens.labels(backend_name).inc(progress.tokens)
    if progress.done < progress.total:
        if svc.stopping_jobs.is_set() and not job.cancel_requested:
            await job.requeue("preempted by shutdown; resumes from the lines already written")
            raise RuntimeError(f"rollout job {env.job_id} preempted; leaving it for redelivery")
        await job.finish(JobState.CANCELLED, error="cancelled by request", summary=summary(),
                         step=progress.done, total_steps=progress.total)
        return
    digest, size, counts = await asyncio.to_thread(_describe_output, out_path)
    job.emit("artifact-added", RunArtifactAdded, kind="samples", format="jsonl", path=str(out_path),
             sha256=digest, size_bytes=size, step=progress.done)
    await job.finish(JobState.SUCCEEDED, step=progress.done, total_steps=progress.total,
                     summary=summary(output=str(out_path), sha256=digest, backend=backend_name, **counts))


def _describe_output(out_path: Path) -> tuple[str, int, dict[str, float | int]]:
    return hashlib.sha256(out_path.read_bytes()).hexdigest(), out_path.stat().st_size, summarize(out_path)


def _prepare_run_dir(svc: Rollout, env: JobEnvelope, spec: RolloutJobSpec, attempt: int) -> tuple[Path, int | None]:
    """Write spec.json; return the output path and, on a redelivery, how many prompts are already done."""
    run_dir = svc.settings.paths.run_dir(env.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(spec.model_dump_json(indent=2))
    out_path = Path(spec.output).expanduser() if spec.output else run_dir / "samples.jsonl"
    return out_path, (completed_lines(out_path) if attempt > 1 else None)
