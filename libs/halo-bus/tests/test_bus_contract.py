"""One behaviour, two backends: every test here runs on the in-memory bus and a real nats-server."""

from __future__ import annotations

import asyncio

import pytest
from halo_bus import Bus, subjects
from halo_bus.api import EventRecord, JobDelivery
from halo_common.errors import BadRequest, HaloError, NotFound, Unavailable
from halo_schemas import JobEnvelope, JobStatus, Message, RunProgressed
from halo_schemas.jobs import JobState
from halo_testing import await_until
from pydantic import Field


class Ping(Message):
    schema_id = "halo.test.ping.v1"
    text: str = Field(description="payload")


class Pong(Message):
    schema_id = "halo.test.pong.v1"
    text: str = Field(description="payload")


class Stranger(Message):
    schema_id = "halo.test.stranger.v1"
    value: int = 0


RPC = subjects.rpc("registry", "test-echo")
JOB = subjects.job("trainer-torch", "sft")


def envelope(n: int) -> JobEnvelope:
    return JobEnvelope(job_id=f"job-{n}", run_id=f"run-{n}", job_type="sft", spec_schema="x", spec={"n": n})


async def test_request_reply_round_trip(bus: Bus) -> None:
    svc = await bus.add_service("registry", "1.2.3")

    async def echo(req: Ping) -> Pong:
        return Pong(text=req.text.upper())

    await svc.add_endpoint(RPC, echo, Ping)
    reply = await bus.request(RPC, Ping(text="hi"), Pong)
    assert reply == Pong(text="HI")
    await svc.stop()


async def test_errors_keep_their_code_and_param(bus: Bus) -> None:
    svc = await bus.add_service("registry", "1.0.0")

    async def fails(req: Ping) -> Pong:
        if req.text == "missing":
            raise NotFound("no such run", param="run_id")
        raise ZeroDivisionError("boom")

    await svc.add_endpoint(RPC, fails, Ping)
    with pytest.raises(NotFound) as err:
        await bus.request(RPC, Ping(text="missing"), Pong)
    assert err.value.code == 404 and err.value.param == "run_id" and "no such run" in err.value.message
    # A handler bug becomes a 500 with the exception named; the service keeps serving.
    with pytest.raises(HaloError) as err:
        await bus.request(RPC, Ping(text="x"), Pong)
    assert err.value.code == 500 and "ZeroDivisionError" in err.value.message
    with pytest.raises(NotFound):
        await bus.request(RPC, Ping(text="missing"), Pong)
    await svc.stop()


async def test_wrong_schema_is_a_clear_400_and_service_survives(bus: Bus) -> None:
    svc = await bus.add_service("registry", "1.0.0")

    async def echo(req: Ping) -> Pong:
        return Pong(text=req.text)

    await svc.add_endpoint(RPC, echo, Ping)
    with pytest.raises(BadRequest) as err:
        await bus.request(RPC, Stranger(value=1), Pong)
    assert "halo.test.stranger.v1" in err.value.message
    assert (await bus.request(RPC, Ping(text="still up"), Pong)).text == "still up"
    await svc.stop()


async def test_no_responder_is_unavailable(bus: Bus) -> None:
    with pytest.raises(Unavailable) as err:
        await bus.request(subjects.rpc("eval", "nobody-home"), Ping(text="?"), Pong, timeout=0.5)
    assert err.value.code == 503


async def test_discovery_lists_instances_and_endpoints(bus: Bus) -> None:
    svc = await bus.add_service("registry", "2.0.0", metadata={"backend": "cpu"})

    async def echo(req: Ping) -> Pong:
        return Pong(text=req.text)

    await svc.add_endpoint(RPC, echo, Ping)
    found = [s for s in await bus.discover(timeout=0.3) if s.id == svc.id]
    assert len(found) == 1
    assert found[0].name == "registry" and found[0].version == "2.0.0"
    assert RPC in found[0].endpoints and found[0].metadata["backend"] == "cpu"
    await svc.stop()


async def test_job_is_processed_once_and_dedup_drops_resubmission(bus: Bus) -> None:
    seen: list[str] = []

    async def handle(d: JobDelivery[JobEnvelope]) -> None:
        seen.append(d.message.job_id)

    assert await bus.submit_job(JOB, envelope(1), msg_id="job-1") is True
    assert await bus.submit_job(JOB, envelope(1), msg_id="job-1") is False  # duplicate
    await bus.submit_job(JOB, envelope(2), msg_id="job-2")
    sub = await bus.consume_jobs(JOB, "trainer-torch-sft", handle, JobEnvelope, ack_wait_s=2)
    # A work queue delivers in order: once a job submitted after them arrives, a duplicate would have too.
    await bus.submit_job(JOB, envelope(3), msg_id="job-3")
    await await_until(lambda: "job-3" in seen)
    assert seen == ["job-1", "job-2", "job-3"]
    await sub.stop()


async def test_unacked_job_is_redelivered_to_a_second_consumer_after_the_first_dies(bus: Bus) -> None:
    started = asyncio.Event()
    first_deliveries: list[int] = []
    second: list[tuple[str, int]] = []

    async def hangs(d: JobDelivery[JobEnvelope]) -> None:
        first_deliveries.append(d.num_delivered)
        started.set()
        await asyncio.sleep(3600)  # the worker "dies" while holding the job

    async def works(d: JobDelivery[JobEnvelope]) -> None:
        second.append((d.message.job_id, d.num_delivered))

    await bus.submit_job(JOB, envelope(7), msg_id="job-7")
    first = await bus.consume_jobs(JOB, "trainer-torch-sft", hangs, JobEnvelope, ack_wait_s=1.0)
    await asyncio.wait_for(started.wait(), 10)
    await first.stop()  # dies without ack: its heartbeats stop too
    survivor = await bus.consume_jobs(JOB, "trainer-torch-sft", works, JobEnvelope, ack_wait_s=1.0)
    await await_until(lambda: len(second) == 1, timeout=15)
    assert first_deliveries == [1]
    assert second == [("job-7", 2)]
    await survivor.stop()


async def test_long_job_is_not_redelivered_while_its_worker_heartbeats(bus: Bus) -> None:
    calls: list[int] = []

    async def slow(d: JobDelivery[JobEnvelope]) -> None:
        calls.append(d.num_delivered)
        await asyncio.sleep(2.5)  # longer than ack_wait: heartbeats keep the lease

    await bus.submit_job(JOB, envelope(8), msg_id="job-8")
    sub = await bus.consume_jobs(JOB, "trainer-torch-sft", slow, JobEnvelope, ack_wait_s=1.0, concurrency=2)
    await await_until(lambda: len(calls) == 1)
    await asyncio.sleep(3.5)
    assert calls == [1]
    await sub.stop()


async def test_bad_job_is_terminated_not_retried(bus: Bus) -> None:
    calls: list[int] = []

    async def rejects(d: JobDelivery[JobEnvelope]) -> None:
        calls.append(d.num_delivered)
        raise BadRequest("unknown field 'lora_rnak'", param="lora_rnak")

    await bus.submit_job(JOB, envelope(9), msg_id="job-9")
    sub = await bus.consume_jobs(JOB, "trainer-torch-sft", rejects, JobEnvelope, ack_wait_s=0.5)
    await await_until(lambda: len(calls) == 1)
    await asyncio.sleep(1.5)
    assert calls == [1]
    await sub.stop()


async def test_failed_job_is_retried_up_to_max_deliver(bus: Bus) -> None:
    calls: list[int] = []

    async def flaky(d: JobDelivery[JobEnvelope]) -> None:
        calls.append(d.num_delivered)
        raise RuntimeError("transient")

    await bus.submit_job(JOB, envelope(10), msg_id="job-10")
    sub = await bus.consume_jobs(JOB, "trainer-torch-sft", flaky, JobEnvelope, ack_wait_s=0.5, max_deliver=3)
    await await_until(lambda: len(calls) >= 3, timeout=15)
    await asyncio.sleep(2.0)
    assert calls == [1, 2, 3]
    await sub.stop()


def progressed(run_id: str, seq: int) -> RunProgressed:
    return RunProgressed(run_id=run_id, service="trainer-torch", seq=seq, step=seq, metrics={"loss": 1.0 / (seq + 1)})


async def test_events_replay_per_run_with_dedup(bus: Bus) -> None:
    for run_id in ("run-a", "run-b"):
        for seq in range(3):
            subject = subjects.run_event("trainer-torch", run_id, "progressed")
            await bus.publish_event(subject, progressed(run_id, seq), msg_id=f"{run_id}-{seq}")
    await bus.publish_event(subjects.run_event("trainer-torch", "run-a", "progressed"), progressed("run-a", 0), msg_id="run-a-0")
    history = await bus.replay(subjects.run_events_filter("run-a"), RunProgressed)
    assert [r.message.seq for r in history] == [0, 1, 2]
    assert all(isinstance(r, EventRecord) and r.message.run_id == "run-a" for r in history)
    assert [r.sequence for r in history] == sorted(r.sequence for r in history)
    assert await bus.replay(subjects.run_events_filter("run-zzz")) == []


async def test_durable_event_consumer_resumes_where_it_stopped(bus: Bus) -> None:
    got: list[int] = []

    async def handler(rec: EventRecord[RunProgressed]) -> None:
        got.append(rec.message.seq)

    subject = subjects.run_event("trainer-torch", "run-c", "progressed")
    for seq in range(3):
        await bus.publish_event(subject, progressed("run-c", seq))
    sub = await bus.subscribe_events(subjects.RUN_EVENTS_WILDCARD, handler, durable="test-ingest")
    await await_until(lambda: len(got) == 3)
    await sub.stop()
    for seq in range(3, 6):
        await bus.publish_event(subject, progressed("run-c", seq))
    sub = await bus.subscribe_events(subjects.RUN_EVENTS_WILDCARD, handler, durable="test-ingest")
    # Events arrive in order: once one published after them arrives, a replay of 0-2 would have too.
    await bus.publish_event(subject, progressed("run-c", 6))
    await await_until(lambda: 6 in got)
    assert got == [0, 1, 2, 3, 4, 5, 6]
    await sub.stop()


async def test_event_handler_failure_redelivers(bus: Bus) -> None:
    attempts: list[int] = []

    async def flaky(rec: EventRecord[RunProgressed]) -> None:
        attempts.append(rec.message.seq)
        if len(attempts) == 1:
            raise RuntimeError("database briefly down")

    await bus.publish_event(subjects.run_event("trainer-torch", "run-d", "progressed"), progressed("run-d", 0))
    sub = await bus.subscribe_events(subjects.run_events_filter("run-d"), flaky, durable="test-flaky")
    await await_until(lambda: len(attempts) >= 2, timeout=10)
    assert attempts[:2] == [0, 0]
    await sub.stop()


async def test_kv_job_state(bus: Bus) -> None:
    bucket = subjects.KV_JOB_STATE
    assert await bus.kv_get(bucket, "job-1", JobStatus) is None
    st = JobStatus(job_id="job-1", run_id="run-1", job_type="sft", service="trainer-torch", state=JobState.QUEUED)
    await bus.kv_put(bucket, "job-1", st)
    await bus.kv_put(bucket, "job-1", st.model_copy(update={"state": JobState.RUNNING, "attempt": 1}))
    got = await bus.kv_get(bucket, "job-1", JobStatus)
    assert got is not None and got.state is JobState.RUNNING and got.attempt == 1
    assert await bus.kv_keys(bucket) == ["job-1"]


async def test_job_with_unknown_schema_is_dropped_and_the_consumer_keeps_working(bus: Bus) -> None:
    seen: list[str] = []

    async def handle(d: JobDelivery[JobEnvelope]) -> None:
        seen.append(d.message.job_id)

    await bus.submit_job(JOB, Stranger(value=3), msg_id="stranger-1")
    await bus.submit_job(JOB, envelope(11), msg_id="job-11")
    sub = await bus.consume_jobs(JOB, "trainer-torch-sft", handle, JobEnvelope, ack_wait_s=0.5)
    await await_until(lambda: seen == ["job-11"])
    await asyncio.sleep(1.2)  # the stranger is never retried into the handler
    assert seen == ["job-11"]
    await sub.stop()


# ---- batched event consumer ------------------------------------------------------------------
BATCH_RUN = "run-batch"
BATCH_FILTER = subjects.run_events_filter(BATCH_RUN)


async def publish_progress(bus: Bus, seqs: range) -> None:
    for seq in seqs:
        await bus.publish_event(subjects.run_event("trainer-torch", BATCH_RUN, "progressed"), progressed(BATCH_RUN, seq))


async def test_batched_consumer_delivers_in_order_in_batches_and_resumes(bus: Bus) -> None:
    batches: list[list[tuple[int, int]]] = []

    async def handler(batch: list[EventRecord[RunProgressed]]) -> None:
        batches.append([(r.message.seq, r.num_delivered) for r in batch])

    def seen() -> list[int]:
        return [seq for b in batches for seq, _ in b]

    await publish_progress(bus, range(7))
    sub = await bus.consume_events_batched(BATCH_FILTER, "test-batched", handler, message_type=RunProgressed,
                                           batch_size=3, max_wait_s=0.2)
    await await_until(lambda: len(seen()) == 7)
    await sub.stop()
    assert seen() == list(range(7))
    assert all(1 <= len(b) <= 3 for b in batches) and len(batches) >= 3
    assert {n for b in batches for _, n in b} == {1}  # each acked on its first delivery

    # A restarted durable consumer resumes after the last acked event.
    await publish_progress(bus, range(7, 10))
    sub = await bus.consume_events_batched(BATCH_FILTER, "test-batched", handler, message_type=RunProgressed,
                                           batch_size=3, max_wait_s=0.2)
    # In order: once an event published after them arrives, a replay of 0-6 would have too.
    await publish_progress(bus, range(10, 11))
    await await_until(lambda: 10 in seen())
    assert seen() == list(range(11))
    await sub.stop()


async def test_batched_handler_raising_redelivers_the_whole_batch(bus: Bus) -> None:
    calls: list[list[tuple[int, int]]] = []

    async def flaky(batch: list[EventRecord[RunProgressed]]) -> None:
        calls.append([(r.message.seq, r.num_delivered) for r in batch])
        if len(calls) == 1:
            raise RuntimeError("database briefly down")

    await publish_progress(bus, range(3))
    sub = await bus.consume_events_batched(BATCH_FILTER, "test-batched-raise", flaky, batch_size=10, max_wait_s=0.2)
    await await_until(lambda: sum(len(c) for c in calls[1:]) >= 3, timeout=15)
    await sub.stop()
    assert calls[0] == [(0, 1), (1, 1), (2, 1)]
    assert [seq for c in calls[1:] for seq, _ in c] == [0, 1, 2]
    assert {n for c in calls[1:] for _, n in c} == {2}


async def test_batched_handler_returns_only_the_records_to_retry(bus: Bus) -> None:
    calls: list[list[tuple[int, int]]] = []

    async def picky(batch: list[EventRecord[RunProgressed]]) -> list[EventRecord[RunProgressed]]:
        calls.append([(r.message.seq, r.num_delivered) for r in batch])
        return [r for r in batch if r.message.seq == 1 and r.num_delivered < 3]

    await publish_progress(bus, range(3))
    sub = await bus.consume_events_batched(BATCH_FILTER, "test-batched-retry", picky, batch_size=10, max_wait_s=0.2)
    await await_until(lambda: (1, 3) in [x for c in calls for x in c], timeout=15)
    await asyncio.sleep(1.5)  # the retried event was acked on its third delivery: nothing more comes
    await sub.stop()
    assert calls[0] == [(0, 1), (1, 1), (2, 1)]
    assert calls[1:] == [[(1, 2)], [(1, 3)]]  # only the returned record, again and again


async def test_batched_consumer_drops_undecodable_events_and_reports_them(bus: Bus) -> None:
    got: list[int] = []
    dropped: list[tuple[str, str]] = []

    async def handler(batch: list[EventRecord[RunProgressed]]) -> None:
        got.extend(r.message.seq for r in batch)

    subject = subjects.run_event("trainer-torch", BATCH_RUN, "progressed")
    await bus.publish_event(subject, Stranger(value=1))  # a valid message of the wrong type
    await publish_progress(bus, range(2))
    sub = await bus.consume_events_batched(
        BATCH_FILTER, "test-batched-bad", handler, message_type=RunProgressed, batch_size=10, max_wait_s=0.2,
        on_undecodable=lambda subj, exc: dropped.append((subj, str(exc))),
    )
    await await_until(lambda: got == [0, 1] and len(dropped) == 1)
    await asyncio.sleep(1.5)  # the dropped event is never retried
    await sub.stop()
    assert got == [0, 1]
    assert dropped[0][0] == subject and "halo.test.stranger.v1" in dropped[0][1]


async def test_batched_slow_handler_keeps_its_lease_and_stop_settles_the_batch_in_hand(bus: Bus) -> None:
    calls: list[list[tuple[int, int]]] = []
    done: list[int] = []

    async def slow(batch: list[EventRecord[RunProgressed]]) -> None:
        calls.append([(r.message.seq, r.num_delivered) for r in batch])
        await asyncio.sleep(2.5 if batch[0].message.seq == 0 else 1.0)  # longer than ack_wait
        done.extend(r.message.seq for r in batch)

    await publish_progress(bus, range(2))
    sub = await bus.consume_events_batched(BATCH_FILTER, "test-batched-slow", slow, batch_size=10, max_wait_s=0.2,
                                           ack_wait_s=1.0)
    await await_until(lambda: done == [0, 1])
    await asyncio.sleep(1.5)
    assert calls == [[(0, 1), (1, 1)]]  # the lease was extended while it ran: no redelivery

    # Stopped while a batch is in hand: the batch finishes and is acked, nothing comes back.
    await publish_progress(bus, range(2, 3))
    await await_until(lambda: len(calls) == 2)
    await sub.stop()
    assert done == [0, 1, 2]
    again: list[int] = []

    async def record(batch: list[EventRecord[RunProgressed]]) -> None:
        again.extend(r.message.seq for r in batch)

    sub = await bus.consume_events_batched(BATCH_FILTER, "test-batched-slow", record, batch_size=10, max_wait_s=0.2,
                                           ack_wait_s=1.0)
    await publish_progress(bus, range(3, 4))
    await await_until(lambda: again == [3])
    await asyncio.sleep(1.5)  # past ack_wait: the settled batches never come back
    await sub.stop()
    assert again == [3]
