"""Sweep-level operations behind the RPCs: create, resume, read, best, fork-best, marking the best run.

Each takes the Optuna storage and the bus; storage calls run in a thread (Optuna's storage is synchronous).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import optuna
from halo_bus import Bus
from halo_clients.eval import EvalClient
from halo_clients.jobs import JobsClient
from halo_clients.registry import RegistryClient
from halo_common.errors import BadRequest, Conflict, HaloError, NotFound
from halo_common.ids import new_id, validate_id
from halo_schemas.base import describe_validation_error
from halo_schemas.jobs import JobState
from halo_schemas.sweeps import SweepBest, SweepForked, SweepInfo, SweepJobSpec, SweepSpec, SweepStarted
from pydantic import ValidationError

from halo_sweeps.core import study as st
from halo_sweeps.core.capacity import check_parallel, host_trial_slots
from halo_sweeps.core.objective import resolve_eval_objective
from halo_sweeps.core.space import check_sweep, grid_size, method_spec, path_problem, set_path

log = logging.getLogger("halo_sweeps")

#: Tag of the best trial's run in the registry.
BEST_TAG = "sweep-best"


def parse_sweep(raw: dict[str, Any]) -> SweepSpec:
    """A validated :class:`SweepSpec` (BadRequest naming the field), checked against its method's spec."""
    try:
        sweep = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        raise BadRequest(describe_validation_error(exc, what="sweep spec"),
                         param=".".join(str(p) for p in first) or None) from None
    check_sweep(sweep)
    return sweep


def budget(sweep: SweepSpec) -> int:
    return min(sweep.n_trials, grid_size(sweep.search_space)) if sweep.sampler == "grid" else sweep.n_trials


def check_sweep_id(sweep_id: str) -> str:
    return validate_id(sweep_id, "sweep_id")


async def start_coordinator(storage: optuna.storages.RDBStorage, bus: Bus, sweep_id: str,
                            sweep: SweepSpec) -> SweepStarted:
    """Submit the coordinator job of ``sweep_id`` (recorded on the study first)."""
    jobs = JobsClient(bus)
    job_id, run_id = new_id("job"), new_id("run")
    study_id = await asyncio.to_thread(storage.get_study_id_from_name, sweep_id)
    await asyncio.to_thread(storage.set_study_user_attr, study_id, st.ATTR_JOB, job_id)
    spec = SweepJobSpec(sweep_id=sweep_id, sweep=sweep, name=sweep.name or sweep_id, tags=["sweep-coordinator"])
    await jobs.submit(await jobs.route("sweep"), spec, total_steps=budget(sweep), job_id=job_id, run_id=run_id)
    return SweepStarted(sweep_id=sweep_id, job_id=job_id, run_id=run_id, n_trials=budget(sweep))


async def create(storage: optuna.storages.RDBStorage, bus: Bus, raw: dict[str, Any], *,
                 slots: int | None = None) -> SweepStarted:
    """Validate (nothing starts on bad input), create the study, start the coordinator. ``slots``: the host's
    trial slots (:func:`~halo_sweeps.core.capacity.host_trial_slots`; None: this host's devices); an eval
    objective's task is resolved on the eval service first."""
    sweep = parse_sweep(raw)
    check_parallel(sweep, slots if slots is not None else await asyncio.to_thread(host_trial_slots))
    sweep = await resolve_eval_objective(EvalClient(bus), sweep)
    sweep_id = new_id("sweep")
    await asyncio.to_thread(st.create_study, storage, sweep_id, sweep)
    return await start_coordinator(storage, bus, sweep_id, sweep)


async def _described(storage: optuna.storages.RDBStorage, bus: Bus, sweep_id: str,
                     with_trials: bool) -> SweepInfo:
    """The sweep with its coordinator job's state. The state is read first: a sweep reported finished is then
    shown with every trial its coordinator told."""
    study_id = await asyncio.to_thread(storage.get_study_id_from_name, sweep_id)
    job_id = (await asyncio.to_thread(storage.get_study_user_attrs, study_id)).get(st.ATTR_JOB)
    status = None
    if job_id is not None:
        try:
            status = await JobsClient(bus).status(job_id)
        except NotFound:
            status = None
    info = await asyncio.to_thread(st.describe, storage, sweep_id, with_trials=with_trials)
    if status is None or status.job_id != info.job_id:
        return info
    return info.model_copy(update={"state": status.state, "error": status.error})


async def show(storage: optuna.storages.RDBStorage, bus: Bus, sweep_id: str) -> SweepInfo:
    await asyncio.to_thread(st.sweep_of, storage, check_sweep_id(sweep_id))  # NotFound naming sweep_id
    return await _described(storage, bus, sweep_id, with_trials=True)


async def list_sweeps(storage: optuna.storages.RDBStorage, bus: Bus, limit: int) -> list[SweepInfo]:
    ids = await asyncio.to_thread(st.list_sweeps, storage, limit)
    return list(await asyncio.gather(*(_described(storage, bus, i, with_trials=False) for i in ids)))


async def resume(storage: optuna.storages.RDBStorage, bus: Bus, sweep_id: str) -> SweepStarted:
    """A new coordinator for a sweep whose coordinator ended (cancelled, failed) before its budget was used."""
    info = await show(storage, bus, sweep_id)
    if info.state is not None and not info.state.terminal:
        raise Conflict(f"sweep {sweep_id} is {info.state} (coordinator {info.job_id}); nothing to resume",
                       param="sweep_id")
    sweep = SweepSpec.model_validate(info.spec)
    used = await asyncio.to_thread(st.used_budget, storage, sweep_id)
    if info.state == JobState.SUCCEEDED and used >= budget(sweep):
        raise Conflict(f"sweep {sweep_id} already ran its {budget(sweep)} trials", param="sweep_id")
    return await start_coordinator(storage, bus, sweep_id, sweep)


async def cancel(storage: optuna.storages.RDBStorage, bus: Bus, sweep_id: str) -> SweepInfo:
    info = await show(storage, bus, sweep_id)
    if info.job_id is None:
        raise NotFound(f"sweep {sweep_id} has no coordinator job", param="sweep_id")
    await JobsClient(bus).cancel(info.job_id)
    return await show(storage, bus, sweep_id)


def _best(storage: optuna.storages.RDBStorage, sweep_id: str) -> SweepBest:
    sweep = st.sweep_of(storage, sweep_id)
    study_id = storage.get_study_id_from_name(sweep_id)
    best = st.best_trial(storage.get_all_trials(study_id, deepcopy=False), sweep.objective.direction)
    if best is None:
        raise NotFound(f"sweep {sweep_id} has no complete trial yet", param="sweep_id")
    return SweepBest(sweep_id=sweep_id, trial=st.trial_view(best), method=sweep.method, spec=st.trial_spec(best))


async def best(storage: optuna.storages.RDBStorage, sweep_id: str) -> SweepBest:
    return await asyncio.to_thread(_best, storage, check_sweep_id(sweep_id))


def fork_spec(found: SweepBest, overrides: dict[str, Any], name: str | None) -> dict[str, Any]:
    """The best trial's spec as a full run: without the sweep's tags, with ``overrides`` set at their paths."""
    spec_cls = method_spec(found.method)
    spec = dict(found.spec)
    spec["tags"] = [t for t in spec.get("tags") or [] if not t.startswith(("sweep:", "sweep-trial:"))] + [
        f"sweep-fork:{found.sweep_id}"]
    spec["name"] = name or f"{found.sweep_id} best (trial {found.trial.number})"
    for path, value in overrides.items():
        problem = path_problem(spec_cls, path)
        if problem:
            raise BadRequest(f"overrides.{path}: {problem}", param=f"overrides.{path}")
        set_path(spec, path, value)
    return spec


async def fork_best(storage: optuna.storages.RDBStorage, bus: Bus, sweep_id: str, overrides: dict[str, Any],
                    name: str | None) -> SweepForked:
    found = await best(storage, sweep_id)
    raw = fork_spec(found, overrides, name)
    try:
        spec = method_spec(found.method).model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        raise BadRequest(describe_validation_error(exc, what="forked spec"),
                         param=".".join(["overrides", *map(str, first)])) from None
    jobs = JobsClient(bus)
    submitted = await jobs.submit(await jobs.route(found.method, spec.backend), spec, total_steps=spec.max_steps)
    return SweepForked(sweep_id=sweep_id, trial=found.trial.number, job_id=submitted.job_id,
                       run_id=submitted.run_id, spec=spec.model_dump(mode="json"))


async def mark_best(storage: optuna.storages.RDBStorage, bus: Bus, sweep_id: str, *, attempts: int = 1,
                    delay_s: float = 1.0) -> str | None:
    """Tag the best trial's run ``sweep-best`` in the registry (and untag the previous best). Returns the run
    marked, None when the registry could not be reached or has not ingested the run yet."""
    try:
        found = await best(storage, sweep_id)
    except NotFound:
        return None
    run_id = found.trial.run_id
    if run_id is None:
        return None
    study_id = await asyncio.to_thread(storage.get_study_id_from_name, sweep_id)
    previous = (await asyncio.to_thread(storage.get_study_user_attrs, study_id)).get(st.ATTR_BEST_RUN)
    if previous == run_id:
        return run_id
    registry = RegistryClient(bus)
    for attempt in range(attempts):
        try:
            await registry.tag(run_id, add=[BEST_TAG])
            if previous:
                try:
                    await registry.tag(previous, remove=[BEST_TAG])
                except NotFound:
                    pass
            await asyncio.to_thread(storage.set_study_user_attr, study_id, st.ATTR_BEST_RUN, run_id)
            return run_id
        except HaloError as exc:  # registry down, or the run not ingested yet
            if attempt == attempts - 1:
                log.warning("sweep %s: could not mark %s as best in the registry: %s", sweep_id, run_id, exc)
            else:
                await asyncio.sleep(delay_s)
    return None
