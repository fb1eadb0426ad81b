"""The registry against a real nats-server: stopped while a training job emits, started again, every
metric point ends up stored exactly once — also when a crash loses the acks of committed events,
and when the whole stream is replayed from the start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from halo_bus import NatsBus, subjects
from halo_common.natsproc import NatsProcess
from halo_registry.core.db import metrics
from halo_registry.service import Registry
from halo_registry.settings import RegistrySettings
from halo_registry.testing import RegistryDb, registry_db  # noqa: F401
from halo_schemas.registry import RunMetricsRequest
from halo_testing import RunEmitter, await_until
from nats.aio.msg import Msg
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select

pytestmark = pytest.mark.integration

STEPS = 400
METRICS = 3


def step_metrics(step: int) -> dict[str, float]:
    return {"loss": 10.0 - step / 100, "lr": 1e-4 * (step % 7 + 1), "grad_norm": float(step % 13)}


class Trainer:
    """Emits one run's events on its own NATS connection, half before and half after a gate."""

    def __init__(self, bus: NatsBus) -> None:
        self.bus = bus
        self.em = RunEmitter(method="sft", spec={"tags": ["ingest-test"]})
        self.sent = 0

    async def emit(self, events: list) -> None:  # noqa: ANN001
        for i, ev in enumerate(events):
            await self.bus.publish_event(self.em.subject(ev), ev, msg_id=self.em.msg_id(ev))
            self.sent += 1
            if i % 25 == 0:
                await asyncio.sleep(0.005)  # a trainer logs at a bounded rate

    def first_half(self) -> list:
        return [self.em.started(total_steps=STEPS)] + [self.em.progressed(s, STEPS, **step_metrics(s))
                                                        for s in range(STEPS // 2)]

    def second_half(self) -> list:
        return [self.em.progressed(s, STEPS, **step_metrics(s)) for s in range(STEPS // 2, STEPS)] + [self.em.finished()]


@pytest.fixture
async def nats(fresh_nats_server: NatsProcess) -> AsyncIterator[str]:
    yield fresh_nats_server.url


def settings_for(db: RegistryDb, url: str) -> RegistrySettings:
    return RegistrySettings(home=db.home, database_url=db.url, nats_url=url, ingest_batch=64, ingest_ack_wait_s=2.0,
                            drain_timeout_s=5.0)


async def start_registry(settings: RegistrySettings) -> Registry:
    reg = Registry(settings, await NatsBus.connect(settings.nats_url, name="registry"))
    await reg.start()
    return reg


async def stop_registry(reg: Registry) -> None:
    await reg.stop()
    await reg.bus.close()


def stored_points(reg: Registry) -> int:
    with reg.store.db.read() as conn:
        return conn.scalar(select(func.count()).select_from(metrics))


def assert_exactly_once(reg: Registry, run_id: str) -> None:
    assert stored_points(reg) == STEPS * METRICS
    d = reg.store.get(run_id)
    assert (d.run.status.value, d.run.last_step, d.run.tags) == ("succeeded", STEPS - 1, ["ingest-test"])
    series = {s.name: s for s in reg.store.metrics(RunMetricsRequest(run_id=run_id, max_points=STEPS)).series}
    for name in ("loss", "lr", "grad_norm"):
        s = series[name]
        assert s.steps == list(range(STEPS)) and not s.downsampled
        assert s.values == [step_metrics(i)[name] for i in range(STEPS)], name


async def test_registry_down_mid_training_catches_up_exactly_once(nats: str, registry_db: RegistryDb) -> None:  # noqa: F811
    settings = settings_for(registry_db, nats)
    trainer = Trainer(await NatsBus.connect(nats, name="trainer"))
    reg = await start_registry(settings)
    try:
        emitting = asyncio.create_task(trainer.emit(trainer.first_half()))
        await await_until(lambda: stored_points(reg) >= 60)  # ingesting while the trainer emits
        await stop_registry(reg)  # down mid-run
        await emitting
        before_restart = stored_points(reg)
        assert before_restart < STEPS * METRICS
        await trainer.emit(trainer.second_half())  # training goes on while the registry is down

        reg = await start_registry(settings)
        await await_until(lambda: stored_points(reg) == STEPS * METRICS and
                         reg.store.summary(trainer.em.run_id).status.value == "succeeded")
        assert_exactly_once(reg, trainer.em.run_id)
        # A clean stop acked everything it applied: the restart read only what it had not seen.
        unseen = trainer.sent - (before_restart // METRICS) - 1
        await await_until(lambda: reg.ingest.totals.events >= unseen, timeout=5, what="the counters")  # counters follow the commit
        assert reg.ingest.totals.events == unseen
    finally:
        await stop_registry(reg)
        await trainer.bus.close()


async def test_lost_acks_and_full_replay_store_each_point_once(nats: str, registry_db: RegistryDb,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(registry_db, nats)
    trainer = Trainer(await NatsBus.connect(nats, name="trainer"))
    await trainer.emit(trainer.first_half() + trainer.second_half())

    # A registry that commits but "crashes" before any ack reaches the server: every JetStream ack
    # of this process is lost on the way (the trainer only publishes, so only the registry's are).
    async def lost_ack(_msg: Msg) -> None:
        return None

    monkeypatch.setattr(Msg, "ack", lost_ack)
    crashing = await start_registry(settings)
    await await_until(lambda: stored_points(crashing) == STEPS * METRICS)
    await stop_registry(crashing)
    monkeypatch.undo()

    reg = await start_registry(settings)
    try:
        # Nothing was acked, so after ack_wait every event comes again; the database is unchanged.
        await await_until(lambda: reg.ingest.totals.events == trainer.sent)
        assert_exactly_once(reg, trainer.em.run_id)
        await stop_registry(reg)

        # Forget the durable position altogether: the whole stream is applied once more.
        await trainer.bus.js.delete_consumer(subjects.STREAM_EVENTS, subjects.REGISTRY_INGEST_DURABLE)
        reg = await start_registry(settings)
        await await_until(lambda: reg.ingest.totals.events == trainer.sent)
        assert_exactly_once(reg, trainer.em.run_id)
    finally:
        await stop_registry(reg)
        await trainer.bus.close()


async def test_undecodable_events_do_not_block_the_stream(nats: str, registry_db: RegistryDb) -> None:  # noqa: F811
    settings = settings_for(registry_db, nats)
    trainer = Trainer(await NatsBus.connect(nats, name="trainer"))
    reg = await start_registry(settings)
    try:
        em = trainer.em
        # Garbage on a run-event subject, then a valid run.
        await trainer.bus.js.publish(subjects.run_event("trainer-torch", em.run_id, "progressed"), b"{oops",
                                     headers={"Halo-Schema": "halo.evt.run-progressed.v1"})
        await trainer.emit([em.started(), em.progressed(0, **step_metrics(0)), em.finished()])
        await await_until(lambda: reg.ingest.totals.events == 3)
        assert stored_points(reg) == METRICS and reg.store.summary(em.run_id).status.value == "succeeded"
        assert reg.ingest.metrics.failures._value.get() == 1  # the garbage, dropped and counted
    finally:
        await stop_registry(reg)
        await trainer.bus.close()


async def test_a_database_outage_loses_nothing(nats: str, registry_db: RegistryDb) -> None:  # noqa: F811
    settings = settings_for(registry_db, nats)
    trainer = Trainer(await NatsBus.connect(nats, name="trainer"))
    reg = await start_registry(settings)
    real = reg.store.apply_events
    outage = {"left": 3}

    def flaky(events):  # noqa: ANN001, ANN202
        if outage["left"] > 0:
            outage["left"] -= 1
            raise sa_exc.OperationalError("INSERT …", {}, Exception("could not connect to server"))
        return real(events)

    reg.store.apply_events = flaky  # type: ignore[method-assign]
    try:
        await trainer.emit(trainer.first_half() + trainer.second_half())
        await await_until(lambda: stored_points(reg) == STEPS * METRICS and
                         reg.store.summary(trainer.em.run_id).status.value == "succeeded")
        assert outage["left"] == 0
        assert_exactly_once(reg, trainer.em.run_id)
        assert reg.ingest.metrics.failures._value.get() == 0  # nothing given up
    finally:
        await stop_registry(reg)
        await trainer.bus.close()
