"""A bounded schemathesis run over the gateway's own OpenAPI document: every operation whose services can
run in-process (the real registry on an in-memory bus) gets generated requests, with a token, against the
real app served by uvicorn; no answer may be a 5xx, and every answer must match the document (status code,
content type, body schema)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import uvicorn
from halo_bus import InMemoryBus
from halo_common.natsproc import free_port
from halo_gateway.app import create_app
from halo_gateway.settings import GatewaySettings
from halo_registry.service import Registry
from halo_registry.settings import RegistrySettings
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.integration

TOKEN = "schemathesis-token-0123456789"
EXAMPLES = 10  # per operation: bounded, the whole run stays well under a minute
#: Operations served by services too heavy to run in-process here (a trainer, a model, the code sandbox);
#: their routes are a few lines each and are exercised by the services' own integration tests.
NEEDS_HEAVY_SERVICE = {
    "POST /api/v1/jobs/{method}/preview", "POST /api/v1/rollout/generate", "POST /api/v1/rollout/load",
    "POST /api/v1/verify", "POST /api/v1/verify/batch", "GET /api/v1/verifiers", "POST /api/v1/data/inspect",
    "GET /api/v1/convert/formats",  # asks serve, which loads models
}
#: Routes answered by services this test does not start (eval loads lm-eval, serve models, sweeps its study
#: database): without them they answer 503 "no service answers", as documented; their own suites test them.
OTHER_SERVICE_PREFIXES = ("/api/v1/eval/", "/api/v1/serve/", "/api/v1/sweeps")
#: Streams that never end by design (tested in services/gateway/tests and the browser tests).
ENDLESS_STREAMS = {"GET /api/v1/telemetry/stream"}


class InProcessGateway:
    """The gateway app and the registry on one in-memory bus, served by uvicorn in a background thread."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(bus := InMemoryBus(), GatewaySettings(home=home, token=TOKEN))
        self._bus, self._home = bus, home
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            registry = Registry(RegistrySettings(home=self._home), self._bus)
            await registry.start()
            server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                   lifespan="off"))
            serving = asyncio.create_task(server.serve())
            while not server.started:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.02)
            self._ready.set()
            await self._stop.wait()
            server.should_exit = True
            await serving
            await registry.stop()
            await self._bus.close()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise

    def __enter__(self) -> InProcessGateway:
        self._thread.start()
        assert self._ready.wait(60), "gateway did not start"
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    with InProcessGateway(tmp_path_factory.mktemp("gw") / "home") as gw:
        yield gw


def test_generated_requests_get_no_5xx_and_match_the_document(gateway: InProcessGateway) -> None:
    schema = schemathesis.openapi.from_dict(gateway.app.openapi())
    operations = [r.ok() for r in schema.get_all_operations()]
    tested, failures = [], []
    for op in operations:
        label = f"{op.method.upper()} {op.path}"
        if label in NEEDS_HEAVY_SERVICE or label in ENDLESS_STREAMS or \
                label.split(" ", 1)[1].startswith(OTHER_SERVICE_PREFIXES):
            continue
        tested.append(label)

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=gateway.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
                                   checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                           response_schema_conformance])

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{label}: {str(exc)[:1500]}")
    assert len(tested) >= 20, tested  # the run really covered the API
    assert not failures, "\n\n".join(failures)
