"""The shared job lifecycle, on the in-memory bus and a real nats-server (the ``bus`` fixture runs both)."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
from halo_bus import Bus, subjects
from halo_common.errors import Unavailable
from halo_runtime.jobs import (
    JobLifecycle,
    admit,
    alive_elsewhere,
    last_seq,
    read_status,
    request_cancel,
    submit_job,
)
from halo_schemas.base import UserInput, utcnow
from halo_schemas.events import RunFinished, RunProgressed, RunStarted
from halo_schemas.jobs import JobEnvelope, JobState, JobStatus
from halo_testing import await_until
from pydantic import Field


class EchoSpec(UserInput):
    schema_id = "halo.test.echo.v1"

    steps: int = Field(default=3, description="Steps.")


def envelope(job_type: str = "echo", job_id: str = "job-1", run_id: str = "run-1") -> JobEnvelope:
    return JobEnvelope(job_id=job_id, run_id=run_id, job_type=job_type, spec_schema=EchoSpec.schema_id,
                       spec=EchoSpec().model_dump(mode="json"))


async def events_of(bus: Bus, run_id: str) -> list[tuple[str, object]]:
    return [(r.subject.rsplit(".", 1)[-1], r.message) for r in await bus.replay(subjects.run_events_filter(run_id))]


async def test_submit_records_queued_then_enqueues(bus: Bus) -> None:
    got: list[JobEnvelope] = []

    async def handler(delivery) -> None:  # noqa: ANN001
        got.append(delivery.message)

    sub = await bus.consume_jobs(subjects.job("trainer-torch", "sft"), "t-sft", handler, JobEnvelope)
    submitted = await submit_job(bus, service="trainer-torch", job_type="sft", spec=EchoSpec(steps=5), total_steps=5)
    status = await read_status(bus, submitted.job_id)
    assert status is not None and status.service == "trainer-torch" and status.total_steps == 5
    await await_until(lambda: got, 5, 0.05, "the worker to receive the job")
    await sub.stop()
    assert [e.job_id for e in got] == [submitted.job_id]
    assert got[0].spec == {"steps": 5}
    assert got[0].spec_schema == EchoSpec.schema_id


async def test_a_job_that_cannot_be_enqueued_is_failed_not_left_queued(bus: Bus, monkeypatch) -> None:  # noqa: ANN001
    async def broken(*_a, **_k) -> bool:  # noqa: ANN002, ANN003
        raise ConnectionError("jetstream unavailable")

    monkeypatch.setattr(bus, "submit_job", broken)
    with pytest.raises(Unavailable, match="could not enqueue the sft job for trainer-torch"):
        await submit_job(bus, service="trainer-torch", job_type="sft", spec=EchoSpec(), job_id="job-x", run_id="run-x")
    status = await read_status(bus, "job-x")
    assert status is not None and status.state == JobState.FAILED
    assert status.error == "could not enqueue: jetstream unavailable"


async def test_lifecycle_orders_events_from_threads_and_finishes(bus: Bus) -> None:
    env = envelope()
    job = JobLifecycle(bus, env, service="trainer-torch", worker="w1", previous=None, status_interval_s=0.05)
    await job.start(total_steps=40)
    job.emit("started", RunStarted, method="echo")

    def work(offset: int) -> None:
        for i in range(20):
            job.emit("progressed", RunProgressed, step=offset + i, metrics={"loss": 1.0})
            job.update(step=offset + i)

    threads = [threading.Thread(target=work, args=(k * 20,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    await job.finish(JobState.SUCCEEDED, summary={"steps": 40}, step=40)

    events = await events_of(bus, env.run_id)
    seqs = [m.seq for _, m in events]
    assert seqs == list(range(1, 43)), "one strictly increasing sequence, published in order"
    assert events[0][0] == "started" and events[-1][0] == "finished"
    assert isinstance(events[-1][1], RunFinished) and events[-1][1].summary == {"steps": 40}
    status = await read_status(bus, env.job_id)
    assert status is not None and status.state == JobState.SUCCEEDED and status.step == 40
    assert status.attempt == 1 and status.worker == "w1" and status.error is None


async def test_a_redelivery_continues_the_sequence_and_counts_the_attempt(bus: Bus) -> None:
    env = envelope(run_id="run-re", job_id="job-re")
    first = JobLifecycle(bus, env, service="rollout", worker="w1", previous=None)
    await first.start()
    first.emit("progressed", RunProgressed, step=1)
    await first.requeue("preempted; will resume")
    previous = await read_status(bus, env.job_id)
    assert previous is not None and previous.state == JobState.QUEUED and previous.worker is None

    second = JobLifecycle(bus, env, service="rollout", worker="w2", previous=previous)
    await second.start()
    await second.finish(JobState.FAILED, error="boom")
    assert [m.seq for _, m in await events_of(bus, env.run_id)] == [1, 2]
    assert await last_seq(bus, env.run_id) == 2
    status = await read_status(bus, env.job_id)
    assert status is not None and status.attempt == 2 and status.error == "boom" and status.worker == "w2"


async def test_a_cancel_recorded_by_another_instance_reaches_the_running_job(bus: Bus) -> None:
    env = envelope(job_id="job-c", run_id="run-c")
    job = JobLifecycle(bus, env, service="trainer-torch", worker="w1", previous=None, status_interval_s=0.05)
    fired = asyncio.Event()
    job.on_cancel(fired.set)
    await job.start()
    assert not job.cancel_requested
    await request_cancel(bus, env.job_id)
    await asyncio.wait_for(fired.wait(), timeout=10)
    assert job.cancel_requested
    await job.finish(JobState.CANCELLED, error="cancelled by request")
    status = await read_status(bus, env.job_id)
    assert status is not None and status.state == JobState.CANCELLED and status.cancel_requested


async def test_admit_acks_finished_jobs_and_closes_unknown_and_cancelled_ones(bus: Bus) -> None:
    done = envelope(job_id="job-d", run_id="run-d")
    await bus.kv_put(subjects.KV_JOB_STATE, done.job_id, JobStatus(
        job_id=done.job_id, run_id=done.run_id, job_type="echo", service="eval", state=JobState.SUCCEEDED))
    assert await admit(bus, done, service="eval", worker="w", running=(), fresh_s=5) is None

    odd = envelope(job_type="nope", job_id="job-u", run_id="run-u")
    assert await admit(bus, odd, service="eval", worker="w", running=(), fresh_s=5, known_types=("echo",)) is None
    status = await read_status(bus, odd.job_id)
    assert status is not None and status.state == JobState.FAILED and "unknown job type 'nope'" in (status.error or "")
    assert [name for name, _ in await events_of(bus, odd.run_id)] == ["finished"]

    queued = envelope(job_id="job-q", run_id="run-q")
    await bus.kv_put(subjects.KV_JOB_STATE, queued.job_id, JobStatus(
        job_id=queued.job_id, run_id=queued.run_id, job_type="echo", service="eval", state=JobState.QUEUED))
    await request_cancel(bus, queued.job_id)
    assert await admit(bus, queued, service="eval", worker="w", running=(), fresh_s=5) is None
    status = await read_status(bus, queued.job_id)
    assert status is not None and status.state == JobState.CANCELLED

    fresh = envelope(job_id="job-f", run_id="run-f")
    admission = await admit(bus, fresh, service="eval", worker="w", running=(), fresh_s=5)
    assert admission is not None and admission.previous is None


async def test_admit_holds_a_delivery_while_another_instance_heartbeats(bus: Bus) -> None:
    env = envelope(job_id="job-h", run_id="run-h")
    other = JobLifecycle(bus, env, service="eval", worker="other", previous=None, status_interval_s=0.05)
    await other.start()
    waiter = asyncio.create_task(admit(bus, env, service="eval", worker="me", running=(), fresh_s=5, poll_s=0.05))
    await asyncio.sleep(0.3)
    assert not waiter.done(), "the job is alive on another instance: this delivery must wait"
    await other.finish(JobState.SUCCEEDED)
    assert await asyncio.wait_for(waiter, timeout=10) is None  # finished elsewhere: just acknowledge


def test_alive_elsewhere_rules() -> None:
    now = utcnow()
    running = JobStatus(job_id="j", run_id="r", job_type="t", service="eval", state=JobState.RUNNING, worker="a",
                        heartbeat_at=now)
    assert alive_elsewhere(running, worker="b", running_here=(), fresh_s=5)
    assert not alive_elsewhere(running, worker="a", running_here=(), fresh_s=5), "our own attempt before a restart"
    assert alive_elsewhere(running, worker="a", running_here=("j",), fresh_s=5)
    stale = running.model_copy(update={"heartbeat_at": now - timedelta(seconds=30)})
    assert not alive_elsewhere(stale, worker="b", running_here=(), fresh_s=5)
    assert not alive_elsewhere(None, worker="b", running_here=(), fresh_s=5)
