"""The registry service on the in-memory bus: events in, RPCs out through RegistryClient, errors
mapped with their codes. (The real nats-server path is in tests/integration/test_registry_ingest.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from halo_bus import InMemoryBus, subjects
from halo_clients.registry import RegistryClient
from halo_common.errors import BadRequest, Conflict, NotFound
from halo_registry.service import Registry
from halo_registry.settings import RegistrySettings
from halo_registry.testing import RegistryDb
from halo_schemas.health import HealthRequest, ServiceHealth
from halo_schemas.registry import EvalGridRequest, EvalResultIn, RunSearch, RunsPage
from halo_testing import RunEmitter, await_until, loss_at


@pytest.fixture
async def running(registry_db: RegistryDb) -> AsyncIterator[tuple[InMemoryBus, Registry, RegistryClient]]:
    bus = InMemoryBus()
    settings = RegistrySettings(home=registry_db.home, database_url=registry_db.url, price_per_kwh=0.5)
    svc = Registry(settings, bus)
    await svc.start()
    yield bus, svc, RegistryClient(bus)
    await svc.stop()
    await bus.close()


async def publish(bus: InMemoryBus, em: RunEmitter, events: list) -> None:  # noqa: ANN001
    for ev in events:
        await bus.publish_event(em.subject(ev), ev, msg_id=em.msg_id(ev))


async def test_events_in_queries_out(running) -> None:  # noqa: ANN001
    bus, svc, client = running
    em = RunEmitter(method="sft", spec={"tags": ["svc"]})
    await publish(bus, em, [em.started()] + [em.progressed(s, loss=loss_at(s)) for s in range(25)] + [em.finished()])

    async def done() -> bool:
        page = await client.search(RunSearch(status=["succeeded"]))
        return page.total == 1
    await await_until(done, what="the run to be ingested")

    d = await client.get(em.run_id)
    assert (d.run.last_step, d.run.tags, d.cost.price_per_kwh) == (24, ["svc"], 0.5)
    m = await client.metrics(em.run_id, ["loss"], max_points=5)
    assert m.series[0].bucket_steps == 5 and len(m.series[0].values) == 5
    assert (await client.tag(em.run_id, add=["x"])).tags == ["svc", "x"]
    assert (await client.note(em.run_id, "hello")).run_id == em.run_id
    assert (await client.record_eval(em.run_id, [EvalResultIn(task="t", metric="acc", value=0.5)])).recorded == 1
    grid = await client.grid(EvalGridRequest())
    assert grid.tasks[0].best_run_id == em.run_id
    cmp = await client.compare([em.run_id])
    assert cmp.metrics == ["loss"]
    assert (await client.cost(em.run_id, price_per_kwh=1.0)).price_per_kwh == 1.0
    assert svc.ingest.totals.points == 25

    health = await bus.request(subjects.rpc("registry", "health"), HealthRequest(), ServiceHealth)
    assert health.checks["database"] == "ok" and health.status.value == "ok"
    deleted = await client.delete(em.run_id)
    assert deleted.run_id == em.run_id
    assert (await client.search()).total == 0


async def test_bad_requests_come_back_as_clear_errors(running) -> None:  # noqa: ANN001
    bus, _svc, client = running
    # An unknown filter field / a negative offset sent over the wire (bypassing client validation).
    for body, field in ((b'{"colour": "red"}', "colour: unknown field"),
                        (b'{"offset": -5}', "offset: Input should be greater than or equal to 0"),
                        (b'{"sort": "-colour"}', "unknown sort field 'colour'")):
        with pytest.raises(BadRequest, match=field):
            await _raw_request(bus, subjects.REGISTRY_QUERY_RUNS, "halo.rpc.runs-search.v1", body)
    with pytest.raises(NotFound, match="run-nope"):
        await client.get("run-nope")
    with pytest.raises(NotFound, match="has no replay manifest"):
        em = RunEmitter()
        await publish(bus, em, [em.started()])
        await await_until(lambda: _exists(client, em.run_id), what="the run to be stored")
        await client.replay(em.run_id)
    with pytest.raises(Conflict, match="still running"):
        await client.delete(em.run_id)
    with pytest.raises(NotFound, match="does not exist"):
        await client.import_bundle("/nonexistent/bundle.tar.gz")


async def _exists(client: RegistryClient, run_id: str) -> bool:
    return (await client.search(RunSearch(text=run_id))).total == 1


async def _raw_request(bus: InMemoryBus, subject: str, schema_id: str, body: bytes) -> RunsPage:
    """Send raw JSON under a schema id, exactly as another process could."""
    from halo_bus import codec
    from halo_bus._shared import raise_if_error, run_rpc_handler

    ep = bus._endpoints[subject][0]
    data, headers = await run_rpc_handler(ep.handler, ep.request_type, subject, body, {codec.SCHEMA_HEADER: schema_id})
    raise_if_error(headers)
    return codec.decode(data, headers, RunsPage)


async def test_a_restarted_service_resumes_its_durable_position(registry_db: RegistryDb) -> None:
    bus = InMemoryBus()
    settings = RegistrySettings(home=registry_db.home, database_url=registry_db.url)
    em = RunEmitter()
    first = Registry(settings, bus)
    await first.start()
    await publish(bus, em, [em.started()] + [em.progressed(s, loss=1.0) for s in range(10)])
    client = RegistryClient(bus)
    await await_until(lambda: _last_step(client, em.run_id, 9), what="step 9 to be stored")
    await first.stop()
    await publish(bus, em, [em.progressed(s, loss=1.0) for s in range(10, 20)] + [em.finished()])
    second = Registry(settings, bus)
    await second.start()
    await await_until(lambda: _last_step(client, em.run_id, 19, status="succeeded"), what="the finished run")
    # The restarted instance only read what it had not seen.
    assert second.ingest.totals.events == 11
    await second.stop()
    await bus.close()


async def _last_step(client: RegistryClient, run_id: str, step: int, status: str = "running") -> bool:
    page = await client.search(RunSearch(text=run_id))
    return bool(page.items) and page.items[0].last_step == step and page.items[0].status.value == status
