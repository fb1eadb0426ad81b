"""sweeps on the in-memory bus and a real nats-server (the ``bus`` fixture runs both): bad input (a field the
spec lacks, more parallel trials than the host's devices) refused over the bus before anything starts, a sweep created, listed, shown and cancelled with its coordinator job (no
trainer runs here: its first trial stays queued and is cancelled with the sweep)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from halo_bus import Bus
from halo_clients.jobs import JobsClient
from halo_clients.sweeps import SweepsClient
from halo_common.errors import BadRequest, NotFound
from halo_schemas.jobs import JobState
from halo_sweeps.core.capacity import device_slots
from halo_sweeps.service import Sweeps
from halo_sweeps.settings import SweepsSettings

SPEC = {"name": "svc", "method": "sft", "base": {"model": "tiny://llama", "data": {"train": "x.jsonl"}},
        "search_space": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "n_trials": 2}


async def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


async def test_the_service_starts_and_reports_healthy(bus: Bus, tmp_path: Path) -> None:
    svc = Sweeps(SweepsSettings(HALO_HOME=tmp_path), bus)
    await svc.start()
    try:
        health = await SweepsClient(bus).health()
        assert health.service == "sweeps" and health.status == "ok"
        assert (tmp_path / "optuna.db").is_file()  # Optuna's storage next to the registry's forge.db
    finally:
        await svc.stop()


async def test_create_list_show_cancel(bus: Bus, tmp_path: Path) -> None:
    svc = Sweeps(SweepsSettings(HALO_HOME=tmp_path, HALO_SWEEPS_POLL_S=0.2), bus)
    await svc.start()
    client, jobs = SweepsClient(bus), JobsClient(bus)
    try:
        with pytest.raises(BadRequest) as err:
            await client.create({**SPEC, "search_space": {"lora.rnk": {"type": "int", "low": 1, "high": 4}}})
        assert err.value.param == "search_space.lora.rnk"
        with pytest.raises(BadRequest) as err:  # more trials at once than this host has devices (1 on CPU)
            await client.create({**SPEC, "parallel_trials": device_slots() + 1})
        assert err.value.param == "parallel_trials" and "oversubscribe" in err.value.message
        assert (await client.list()).sweeps == []  # nothing was created, nothing submitted
        assert await jobs.list() == []

        started = await client.create(SPEC)
        assert started.sweep_id.startswith("sweep-") and started.n_trials == 2

        async def trial_queued() -> bool:
            return any(j.job_type == "sft" for j in await jobs.list())
        await wait_for(trial_queued)
        trial_job = next(j for j in await jobs.list() if j.job_type == "sft")
        assert trial_job.service == "trainer-torch" and trial_job.state == JobState.QUEUED

        listed = (await client.list()).sweeps
        assert [s.sweep_id for s in listed] == [started.sweep_id] and listed[0].state == JobState.RUNNING
        info = await client.show(started.sweep_id)
        assert info.name == "svc" and [t.state for t in info.trials] == ["running"]
        assert info.trials[0].job_id == trial_job.job_id and info.counts == {"running": 1}
        with pytest.raises(NotFound):
            await client.best(started.sweep_id)

        await client.cancel(started.sweep_id)

        async def cancelled() -> bool:
            return (await client.show(started.sweep_id)).state == JobState.CANCELLED
        await wait_for(cancelled)
        assert (await jobs.status(trial_job.job_id)).cancel_requested
        info = await client.show(started.sweep_id)
        assert info.trials[0].state == "failed" and info.trials[0].error == "cancelled with the sweep"
    finally:
        await svc.stop()
