"""Bus handlers of sweeps: parse (the bus validates the request type), call ``core``, map. A few lines each.

* RPCs ``create | list | show | cancel | resume | best | fork-best`` (:mod:`halo_sweeps.core.manage`);
* ``run_job``: the coordinator of one sweep, a durable job on ``halo.job.sweeps.sweep``
  (:class:`~halo_sweeps.core.coordinator.Coordinator` inside the shared :class:`~halo_runtime.jobs.JobLifecycle`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import optuna
from halo_bus.api import JobDelivery
from halo_common.errors import BadRequest, NotFound
from halo_runtime.jobs import JobLifecycle, admit, finish_without_running, request_cancel
from halo_schemas.base import describe_validation_error
from halo_schemas.events import RunProgressed, RunStarted
from halo_schemas.jobs import JobEnvelope, JobRef, JobState, JobStatus
from halo_schemas.sweeps import (
    SweepBest,
    SweepCreateRequest,
    SweepForked,
    SweepForkRequest,
    SweepInfo,
    SweepJobSpec,
    SweepList,
    SweepListRequest,
    SweepRef,
    SweepStarted,
)
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ValidationError

from halo_sweeps.core import manage
from halo_sweeps.core import study as st
from halo_sweeps.core.capacity import host_trial_slots
from halo_sweeps.core.coordinator import Coordinator
from halo_sweeps.core.trials import BusTrials

if TYPE_CHECKING:
    from halo_sweeps.service import Sweeps

log = logging.getLogger("halo_sweeps")


async def create(svc: Sweeps, req: SweepCreateRequest) -> SweepStarted:
    slots = await asyncio.to_thread(host_trial_slots, svc.settings.trial_slots)
    return await manage.create(svc.storage, svc.bus, req.spec, slots=slots)


async def list_(svc: Sweeps, req: SweepListRequest) -> SweepList:
    return SweepList(sweeps=await manage.list_sweeps(svc.storage, svc.bus, req.limit))


async def show(svc: Sweeps, req: SweepRef) -> SweepInfo:
    return await manage.show(svc.storage, svc.bus, req.sweep_id)


async def resume(svc: Sweeps, req: SweepRef) -> SweepStarted:
    return await manage.resume(svc.storage, svc.bus, req.sweep_id)


async def best(svc: Sweeps, req: SweepRef) -> SweepBest:
    return await manage.best(svc.storage, req.sweep_id)


async def fork_best(svc: Sweeps, req: SweepForkRequest) -> SweepForked:
    return await manage.fork_best(svc.storage, svc.bus, req.sweep_id, req.overrides, req.name)


async def cancel(svc: Sweeps, req: JobRef) -> JobStatus:
    """Cancel a coordinator job (``JobsClient.cancel`` routes here): it cancels its running trials and ends."""
    running = svc.coordinators.get(req.job_id)
    if running is not None:
        running[0].cancel()
        running[1].wake()
    status = await request_cancel(svc.bus, req.job_id)
    if status is None:
        raise NotFound(f"no job {req.job_id!r}", param="job_id")
    return status


def endpoints(svc: Sweeps) -> list[tuple[str, Callable[[Any], Awaitable[BaseModel]], type[BaseModel]]]:
    """(verb, handler, request type) of every RPC the service serves besides ``health``."""
    table: list[tuple[str, Callable[..., Awaitable[BaseModel]], type[BaseModel]]] = [
        ("create", create, SweepCreateRequest), ("list", list_, SweepListRequest), ("show", show, SweepRef),
        ("cancel", cancel, JobRef), ("resume", resume, SweepRef), ("best", best, SweepRef),
        ("fork-best", fork_best, SweepForkRequest)]
    return [(verb, functools.partial(fn, svc), req) for verb, fn, req in table]


# ---- the coordinator job -------------------------------------------------------------------------------
async def run_job(svc: Sweeps, delivery: JobDelivery[JobEnvelope]) -> None:
    """Coordinate one sweep until its budget is used; a redelivery (coordinator killed) resumes it."""
    env = delivery.message
    s = svc.settings
    admission = await admit(svc.bus, env, service="sweeps", worker=svc.instance_id, running=svc.coordinators,
                            fresh_s=0.8 * s.job_ack_wait_s, known_types=("sweep",), poll_s=1.0)
    if admission is None:
        return
    try:
        spec = SweepJobSpec.model_validate(env.spec)
    except ValidationError as exc:
        error = describe_validation_error(exc, what="sweep job spec")
        await finish_without_running(svc.bus, env, service="sweeps", previous=admission.previous,
                                     state=JobState.FAILED, error=error)
        raise BadRequest(error) from None
    job = JobLifecycle(svc.bus, env, service="sweeps", worker=svc.instance_id, previous=admission.previous,
                       status_interval_s=min(s.status_interval_s, s.job_ack_wait_s / 3))
    started = time.monotonic()
    total = manage.budget(spec.sweep)
    await job.start(total_steps=total)
    job.emit("started", RunStarted, method="sweep", base_model=spec.sweep.base.get("model"), backend=None,
             spec=env.spec, total_steps=total, resumed_from_step=None)

    reporting: set[asyncio.Task[None]] = set()

    async def after_trial(trial: FrozenTrial, study: optuna.Study) -> None:
        outcome = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(trial.state, "failed")
        svc.metrics.trials.labels(outcome).inc()
        # Off the critical path: the next trial is asked and submitted while the registry is told.
        task = asyncio.get_running_loop().create_task(report_progress(svc, job, spec.sweep_id, study, total))
        reporting.add(task)
        task.add_done_callback(reporting.discard)

    coordinator = Coordinator(svc.storage, spec.sweep_id, BusTrials(svc.bus, s.rpc_timeout_s),
                              cancelled=lambda: job.cancel_requested, stopping=svc.stopping.is_set,
                              poll_s=s.poll_s, on_trial_done=after_trial)
    job.on_cancel(coordinator.wake)
    svc.coordinators[env.job_id] = (job, coordinator)
    svc.metrics.running.inc()
    try:
        outcome = await coordinator.run()
    except BaseException as exc:
        if not isinstance(exc, Exception):  # cancelled (shutdown): the sweep is redelivered and resumed
            job.stop_heartbeat()
            raise
        log.exception("sweep %s: coordinator failed", spec.sweep_id)
        await job.finish(JobState.FAILED, error=f"{type(exc).__name__}: {exc}",
                         summary={"duration_s": time.monotonic() - started})
        return
    finally:
        svc.coordinators.pop(env.job_id, None)
        svc.metrics.running.dec()
    if reporting:
        await asyncio.gather(*reporting, return_exceptions=True)
    if outcome == "stopping":
        await job.requeue("service stopping; the sweep resumes on the next coordinator")
        raise RuntimeError(f"sweep {spec.sweep_id} left for redelivery")
    marked = await manage.mark_best(svc.storage, svc.bus, spec.sweep_id, attempts=5)
    info = await manage.show(svc.storage, svc.bus, spec.sweep_id)
    summary: dict[str, Any] = {"sweep_id": spec.sweep_id, "counts": info.counts, "best_run_id": marked,
                               "duration_s": time.monotonic() - started}
    if info.best is not None:
        summary.update(best_trial=info.best.number, best_value=info.best.value, best_params=info.best.params)
    if outcome == "cancelled":
        await job.finish(JobState.CANCELLED, error="cancelled by request", summary=summary)
    else:
        await job.finish(JobState.SUCCEEDED, summary=summary, step=total)


async def report_progress(svc: Sweeps, job: JobLifecycle, sweep_id: str, study: optuna.Study, total: int) -> None:
    """After a trial: the coordinator run's progress (trials done, best value) and the registry's best mark."""
    try:
        await _report_progress(svc, job, sweep_id, study, total)
    except Exception:  # reporting must not stop the sweep
        log.exception("sweep %s: reporting progress failed", sweep_id)


async def _report_progress(svc: Sweeps, job: JobLifecycle, sweep_id: str, study: optuna.Study, total: int) -> None:
    trials = await asyncio.to_thread(study.get_trials, False)
    done = sum(1 for t in trials if st.counts_toward_budget(t))
    metrics = {f"trials_{k}": float(sum(1 for t in trials if t.state == v and not t.user_attrs.get(st.T_ABANDONED)))
               for k, v in (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED),
                            ("failed", TrialState.FAIL))}
    best = st.best_trial(trials, study.direction.name.lower())
    if best is not None and best.value is not None:
        metrics["best_value"] = float(best.value)
    job.update(step=done)
    job.emit("progressed", RunProgressed, step=done, total_steps=total, metrics=metrics)
    await manage.mark_best(svc.storage, svc.bus, sweep_id)
