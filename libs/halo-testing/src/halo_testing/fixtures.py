"""Fixtures: a real nats-server per test session, and the ``bus`` fixture parametrised over the
in-memory bus and a real NatsBus, so one test body checks one behaviour on both backends.

``nats_server`` accepts anyone (unit tests); ``auth_nats_server`` requires the credentials in its
``credentials`` attribute, like the stack's server.

A test that needs only one takes ``memory_bus`` or ``nats_bus``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from halo_bus import Bus, InMemoryBus, NatsBus
from halo_common.natsproc import NatsCredentials, NatsProcess

try:  # the tiny-model fixtures, when halo-models is installed
    from halo_models.pytest_plugin import *  # noqa: F401,F403
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsProcess]:
    """A private nats-server with JetStream on a free port for the whole session."""
    store = tmp_path_factory.mktemp("nats-store")
    proc = NatsProcess.start(store_dir=store, log_file=store / "nats.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def auth_nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsProcess]:
    """A private nats-server that requires a user and password, as ``halo-forge up`` runs it.
    ``proc.credentials`` holds them; ``proc.client_env()`` is the environment for a service."""
    store = tmp_path_factory.mktemp("nats-auth-store")
    proc = NatsProcess.start(store_dir=store / "store", log_file=store / "nats.log",
                             credentials=NatsCredentials.generate())
    yield proc
    proc.stop()


@pytest.fixture
def fresh_nats_server(tmp_path: Path) -> Iterator[NatsProcess]:
    """A nats-server owned by one test (it may kill and restart it)."""
    proc = NatsProcess.start(store_dir=tmp_path / "nats", log_file=tmp_path / "nats.log")
    yield proc
    proc.stop()


async def _purge(bus: NatsBus) -> None:
    """Empty the streams and delete consumers so tests sharing a server do not see each other."""
    from halo_bus import subjects

    for stream in (subjects.STREAM_JOBS, subjects.STREAM_EVENTS):
        try:
            for c in await bus.js.consumers_info(stream):
                await bus.js.delete_consumer(stream, c.name)
        except Exception:
            pass
        await bus.js.purge_stream(stream)
    await bus.js.purge_stream(f"KV_{subjects.KV_JOB_STATE}")


@pytest.fixture
async def nats_bus(nats_server: NatsProcess) -> AsyncIterator[NatsBus]:
    bus = await NatsBus.connect(nats_server.url, name="pytest")
    await _purge(bus)
    yield bus
    await bus.close()


@pytest.fixture
async def memory_bus() -> AsyncIterator[InMemoryBus]:
    bus = InMemoryBus()
    yield bus
    await bus.close()


@pytest.fixture(params=["memory", "nats"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    """The same test against the in-memory bus and a real nats-server."""
    if request.param == "memory":
        b: Bus = InMemoryBus()
        yield b
        await b.close()
    else:
        server: NatsProcess = request.getfixturevalue("nats_server")
        nb = await NatsBus.connect(server.url, name="pytest")
        await _purge(nb)
        yield nb
        await nb.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the test PostgreSQL (HALO_TEST_POSTGRES_URL, default the local trust-auth ``test``
    database). Fails loudly, naming the URL, when it is not reachable: .ci/run starts it."""
    url = os.environ.get("HALO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    try:
        import sqlalchemy

        eng = sqlalchemy.create_engine(url)
        with eng.connect() as conn:
            conn.exec_driver_sql("select 1")
        eng.dispose()
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.fail(f"PostgreSQL not reachable at {url}: {exc}. Start it (see .ci/run) or set HALO_TEST_POSTGRES_URL.")
    return url
