"""Bus handlers of serve: thin (parse, call the engine on its thread, map), and the convert/merge jobs."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING

from halo_bus.api import JobDelivery
from halo_common.backend import detect_backend
from halo_common.errors import BadRequest, HaloError, NotFound
from halo_runtime.jobs import JobLifecycle, admit, finish_without_running, request_cancel
from halo_schemas.convert import ConvertFormats, ConvertFormatsRequest
from halo_schemas.events import RunArtifactAdded, RunProgressed, RunStarted
from halo_schemas.jobs import JobEnvelope, JobRef, JobState, JobStatus
from halo_schemas.serve import (
    ServeInfo,
    ServeInfoRequest,
    ServeListRequest,
    ServeLoadRequest,
    ServeModel,
    ServeModelList,
    ServeUnloadRequest,
)

from halo_serve.core import control
from halo_serve.core.convert.common import supported_matrix
from halo_serve.core.convert.jobs import (
    JOB_SPECS,
    artifact_event_fields,
    job_summary,
    parse_spec,
    run_spec,
    sources,
    started_spec,
    verify_error,
)

if TYPE_CHECKING:
    from halo_serve.service import Serve

log = logging.getLogger("halo_serve.jobs")


async def load(svc: Serve, req: ServeLoadRequest) -> ServeModel:
    if not req.model and not req.adapter:
        raise BadRequest("give a model or an adapter", param="model")
    spec = control.register(svc.engine.catalog, req.id, req.model, req.adapter, req.format, req.backend)
    if req.load:
        await svc.engine.call(svc.engine.ensure_loaded, spec.id)
    return control.model_info(svc.engine, spec.id)


async def unload(svc: Serve, req: ServeUnloadRequest) -> ServeModelList:
    if svc.engine.catalog.get(req.id) is None:
        raise NotFound(f"unknown model id {req.id!r}", param="id")
    await svc.engine.call(svc.engine.unload, req.id)
    if req.forget:
        svc.engine.catalog.unregister(req.id)
    return control.model_list(svc.engine)


async def list_models(svc: Serve, _req: ServeListRequest) -> ServeModelList:
    return control.model_list(svc.engine)


async def info(svc: Serve, _req: ServeInfoRequest) -> ServeInfo:
    return ServeInfo(url=svc.url, version=svc.version, backends=svc.backends)


# ---- convert / merge jobs --------------------------------------------------------------------------
#: Progress lines of a convert, in order: each one is a step of the run's progress bar.
_CONVERT_STEPS = ("resolving", "exporting", "verifying")


async def convert_formats(svc: Serve, _req: ConvertFormatsRequest) -> ConvertFormats:
    formats = await asyncio.to_thread(supported_matrix)
    return ConvertFormats(formats=formats, host=socket.gethostname())


async def cancel(svc: Serve, req: JobRef) -> JobStatus:
    """Record the cancel (KV); a job running here stops before its export starts — an export or merge
    in progress runs to its end (it is one library call)."""
    running = svc.jobs.get(req.job_id)
    if running is not None:
        running.cancel()
    status = await request_cancel(svc.bus, req.job_id)
    if status is None:
        raise NotFound(f"no job {req.job_id!r}", param="job_id")
    return status


async def run_job(svc: Serve, delivery: JobDelivery[JobEnvelope]) -> None:
    """One convert / merge-bake / merge-combine job: validate, run (one at a time, off the engine thread),
    announce the output with ``RunArtifactAdded`` (kind, format, quant, sha256, size, status, verify
    figures) and finish. A failed verify finishes the job ``failed`` with the artifact recorded as failed."""
    env = delivery.message
    worker = svc.registration.id if svc.registration else "serve"
    admission = await admit(svc.bus, env, service="serve", worker=worker, running=svc.jobs.keys(),
                            fresh_s=0.8 * svc.settings.job_ack_wait_s, known_types=tuple(JOB_SPECS))
    if admission is None:
        return
    try:
        spec = parse_spec(env.job_type, env.spec)
    except BadRequest as exc:
        await finish_without_running(svc.bus, env, service="serve", previous=admission.previous,
                                     state=JobState.FAILED, error=exc.message)
        raise
    job = JobLifecycle(svc.bus, env, service="serve", worker=worker, previous=admission.previous,
                       status_interval_s=max(1.0, min(5.0, svc.settings.job_ack_wait_s / 4)))
    svc.jobs[env.job_id] = job
    started = time.monotonic()
    try:
        total = len(_CONVERT_STEPS) if env.job_type == "convert" else 1
        await job.start(total_steps=total)
        job.emit("started", RunStarted, method=env.job_type, base_model=sources(env.job_type, spec)[0],
                 backend=str(detect_backend()), spec=started_spec(env.job_type, spec), total_steps=total)
        async with svc.job_slot:  # one export at a time: each holds a model or two in memory
            if job.cancel_requested:
                await job.finish(JobState.CANCELLED, error="cancelled before it started")
                return
            step = [0]

            def progress(msg: str) -> None:  # worker thread
                if any(msg.startswith(s) for s in _CONVERT_STEPS):
                    step[0] += 1
                    job.update(step=step[0])
                    job.emit("progressed", RunProgressed, step=step[0], total_steps=total,
                             metrics={"elapsed_s": round(time.monotonic() - started, 3)})
                log.info("job %s: %s", env.job_id, msg)

            manifest = await asyncio.to_thread(run_spec, env.job_type, spec, progress)
        job.emit("artifact-added", RunArtifactAdded, **artifact_event_fields(manifest))
        summary = {**job_summary(manifest), "duration_s": round(time.monotonic() - started, 3)}
        error = verify_error(manifest)
        await job.finish(JobState.FAILED if error else JobState.SUCCEEDED, error=error, summary=summary,
                         step=total, total_steps=total)
    except HaloError as exc:  # bad source, refused pair, output exists: retrying cannot help
        await job.finish(JobState.FAILED, error=exc.message,
                         summary={"duration_s": round(time.monotonic() - started, 3)})
    except Exception as exc:
        log.exception("%s job %s failed", env.job_type, env.job_id)
        await job.finish(JobState.FAILED, error=f"{type(exc).__name__}: {exc}",
                         summary={"duration_s": round(time.monotonic() - started, 3)})
    finally:
        svc.jobs.pop(env.job_id, None)
