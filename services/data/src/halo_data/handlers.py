"""Bus handlers of the data service: parse, run the core step in a thread, report, register.

* ``run_job``: one step or a recipe from ``halo.job.data.<type>``. Status, heartbeats, cancel and run events come
  from :class:`~halo_runtime.jobs.JobLifecycle`; every output is registered as a dataset (parents: the input
  dataset, or the previous step of a recipe) and announced as an ``artifact-added`` event. A redelivered job
  resumes: synthesize skips the seeds it already did, a recipe the steps it finished; the other steps are one
  streaming pass and simply run again.
* ``inspect`` (RPC) and ``cancel`` (RPC).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from halo_bus import subjects
from halo_bus.api import JobDelivery
from halo_clients import RegistryClient
from halo_clients.data import SPEC_OF
from halo_common.errors import BadRequest, HaloError
from halo_runtime.jobs import JobLifecycle, admit, cancel_job, finish_without_running
from halo_schemas.base import describe_validation_error
from halo_schemas.data import DATASET_PREFIX, DatasetRegisterRequest, InspectReport, InspectRequest, RecipeSpec
from halo_schemas.events import RunArtifactAdded, RunProgressed, RunStarted
from halo_schemas.jobs import JobEnvelope, JobRef, JobState, JobStatus
from pydantic import ValidationError

from halo_data import adapters
from halo_data.core import inspect as inspect_core
from halo_data.core.common import Cancelled, DataError, Progress, StepResult
from halo_data.core.steps import op_of, run_recipe, run_step, step_params

if TYPE_CHECKING:
    from halo_data.service import DataService

log = logging.getLogger("halo_data")


async def resolve(svc: DataService, ref: str) -> tuple[str, list[str]]:
    """``(path, parent dataset ids)`` of a step input: a file, or ``dataset:<id>`` looked up in the registry."""
    if ref.startswith(DATASET_PREFIX):
        info = await RegistryClient(svc.bus).dataset(ref.removeprefix(DATASET_PREFIX))
        return info.path, [info.dataset_id]
    return ref, []  # a path: expanded by the step, in its thread


async def inspect(svc: DataService, req: InspectRequest) -> InspectReport:
    path, _ = await resolve(svc, req.path)
    try:
        return await asyncio.to_thread(inspect_core.inspect, path, text_key=req.text_key, samples=req.samples,
                                       max_rows=req.max_rows)
    except DataError as exc:
        raise BadRequest(str(exc), param="path") from None


async def cancel(svc: DataService, req: JobRef) -> JobStatus:
    return await cancel_job(svc.bus, svc.running, req.job_id)


async def register(svc: DataService, result: StepResult, *, run_id: str, params: Any, parents: list[str],
                   name: str | None) -> None:
    """Record the step's output as a dataset; its id goes into the step's details (a registry that is down is
    reported in the summary, the output stays)."""
    path = result.output  # absolute (run_step resolves it)
    req = DatasetRegisterRequest(path=path, rows=result.rows_out, sha256=result.details["sha256"],
                                 size_bytes=result.details.get("size_bytes", 0), format=path.rsplit(".", 1)[-1].lower(),
                                 name=name,
                                 recipe=step_params(params), parents=parents, run_id=run_id, stats=result.summary())
    try:
        info = await RegistryClient(svc.bus).register_dataset(req)
        result.details["dataset_id"] = info.dataset_id
    except HaloError as exc:
        log.warning("could not register %s: %s", path, exc)
        result.details["dataset_error"] = str(exc)


async def run_job(svc: DataService, delivery: JobDelivery[JobEnvelope]) -> None:
    env = delivery.message
    worker = svc.registration.id if svc.registration else "data"
    admission = await admit(svc.bus, env, service="data", worker=worker, running=svc.running.keys(),
                            fresh_s=0.8 * svc.settings.job_ack_wait_s, known_types=subjects.DATA_JOB_TYPES)
    if admission is None:
        return
    try:
        spec = SPEC_OF[env.job_type].model_validate(env.spec)
    except ValidationError as exc:
        error = describe_validation_error(exc, what=f"{env.job_type} spec")
        await finish_without_running(svc.bus, env, service="data", previous=admission.previous, state=JobState.FAILED,
                                     error=error)
        raise BadRequest(error) from None
    job = JobLifecycle(svc.bus, env, service="data", worker=worker, previous=admission.previous,
                       status_interval_s=max(1.0, min(5.0, svc.settings.job_ack_wait_s / 4)))
    svc.running[env.job_id] = job
    svc.metrics.running.inc()
    started = time.monotonic()
    try:
        await job.start()
        job.emit("started", RunStarted, method=env.job_type, spec=spec.model_dump(mode="json"),
                 resumed_from_step=None if delivery.num_delivered <= 1 else 0)
        state, error, summary = await _execute(svc, job, env, spec)
    finally:
        svc.running.pop(env.job_id, None)
        svc.metrics.running.dec()
    svc.metrics.jobs.labels(env.job_type, state.value).inc()
    if state == JobState.QUEUED:
        await job.requeue("preempted by shutdown; resumes where it stopped")
        raise RuntimeError(f"data job {env.job_id} preempted; leaving it for redelivery")
    await job.finish(state, error=error, summary={**summary, "duration_s": round(time.monotonic() - started, 3)})


async def _execute(svc: DataService, job: JobLifecycle, env: JobEnvelope, spec: Any) -> tuple[JobState, str | None, dict[str, Any]]:
    loop = asyncio.get_running_loop()
    run_dir = svc.settings.paths.run_dir(env.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(spec.model_dump_json(indent=2))
    plugins = adapters.plugins(svc.bus, loop, verify_timeout_s=svc.settings.verify_timeout_s,
                               teacher_timeout_s=svc.settings.teacher_timeout_s)
    last = [0.0]
    step_no = [0]

    def progress(p: Progress) -> None:  # worker thread
        job.update(step=p.rows_in)
        now = time.monotonic()
        if now - last[0] >= svc.settings.progress_interval_s:
            last[0] = now
            job.emit("progressed", RunProgressed, step=p.rows_in, metrics={
                "rows_in": float(p.rows_in), "rows_out": float(p.rows_out), "dropped": float(p.dropped),
                "recipe_step": float(step_no[0])})

    def should_stop() -> bool:
        return job.cancel_requested or svc.stopping.is_set()

    results: list[StepResult] = []
    try:
        input_path, parents = await resolve(svc, spec.input)
        if isinstance(spec, RecipeSpec):
            def on_step(i: int, result: StepResult) -> None:  # worker thread
                step_no[0] = i + 1
                _account(svc, result)
                if spec.register_dataset:
                    prev = results[-1].details.get("dataset_id") if results else None
                    name = spec.dataset_name if i == len(spec.steps) - 1 else None
                    asyncio.run_coroutine_threadsafe(register(
                        svc, result, run_id=env.run_id, params=spec.steps[i], parents=[prev] if prev else parents,
                        name=name), loop).result()
                results.append(result)
                job.emit("artifact-added", RunArtifactAdded, kind="dataset", format=Path(result.output).suffix[1:],
                         path=result.output, sha256=result.details.get("sha256"), step=i + 1,
                         details={k: v for k, v in result.summary().items() if k in ("op", "rows_out", "dataset_id")})

            done = await asyncio.to_thread(run_recipe, spec, input_path, run_dir, plugins, on_step=on_step,
                                           progress=progress, should_stop=should_stop)
            final = done[-1]
            summary = {"steps": [r.summary() for r in done], "output": final.output, "rows_out": final.rows_out,
                       "dataset_id": final.details.get("dataset_id"), "sha256": final.details.get("sha256")}
            return JobState.SUCCEEDED, None, summary
        op = op_of(spec)
        output = Path(spec.output) if spec.output else run_dir / f"{op}.jsonl"
        result = await asyncio.to_thread(run_step, spec, input_path, output, plugins, text_key=spec.text_key,
                                         progress=progress, should_stop=should_stop)
        _account(svc, result)
        if spec.register_dataset:
            await register(svc, result, run_id=env.run_id, params=spec, parents=parents, name=spec.dataset_name)
        job.emit("artifact-added", RunArtifactAdded, kind="dataset", format=output.suffix[1:], path=result.output,
                 sha256=result.details.get("sha256"), size_bytes=result.details.get("size_bytes"),
                 details={"rows": result.rows_out, "dataset_id": result.details.get("dataset_id")})
        return JobState.SUCCEEDED, None, result.summary()
    except Cancelled:
        if svc.stopping.is_set() and not job.cancel_requested:
            return JobState.QUEUED, None, {}
        return JobState.CANCELLED, "cancelled by request", {"steps": [r.summary() for r in results]}
    except DataError as exc:
        return JobState.FAILED, str(exc), {"steps": [r.summary() for r in results]}
    except HaloError as exc:
        return JobState.FAILED, str(exc), {"steps": [r.summary() for r in results]}
    except Exception as exc:
        log.exception("data job %s failed", env.job_id)
        return JobState.FAILED, f"{type(exc).__name__}: {exc}", {"steps": [r.summary() for r in results]}


def _account(svc: DataService, result: StepResult) -> None:
    svc.metrics.rows_in.labels(result.op).inc(result.rows_in)
    svc.metrics.rows_out.labels(result.op).inc(result.rows_out)
    for reason, n in result.dropped.items():
        svc.metrics.dropped.labels(result.op, reason).inc(n)
