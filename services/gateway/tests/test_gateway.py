"""Gateway: error JSON shape, discovery, OpenAPI, auth, and one trace across gateway -> bus -> service."""

from __future__ import annotations

import httpx
import pytest
from halo_bus import Bus
from halo_common.settings import HaloSettings
from halo_gateway.app import create_app
from halo_gateway.settings import GatewaySettings
from halo_runtime import Service
from halo_telemetry.setup import install_tracer_provider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class Registry(Service):
    name = "registry"
    version = "9.9.9"


@pytest.fixture
async def registry(bus: Bus):  # noqa: ANN201
    svc = Registry(HaloSettings(), bus)
    await svc.start()
    yield svc
    await svc.stop()


def client(bus: Bus, **settings: object) -> httpx.AsyncClient:
    app = create_app(bus, GatewaySettings(**settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


async def test_health_and_service_discovery(bus: Bus, registry: Registry) -> None:
    async with client(bus) as c:
        assert (await c.get("/health")).json()["status"] == "ok"
        listing = (await c.get("/api/v1/services")).json()["services"]
        mine = [s for s in listing if s["id"] == registry.registration.id]
        assert mine and mine[0]["version"] == "9.9.9" and mine[0]["health"]["status"] == "ok"
        assert "halo.rpc.registry.health" in mine[0]["endpoints"]


async def test_errors_use_one_json_shape(bus: Bus) -> None:
    async with client(bus) as c:
        r = await c.get("/api/v1/services/nope/health")
        assert r.status_code == 404
        assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": "not_found_error",
                                      "param": "name", "code": 404}}
        # A known service with nobody running: 503 from the bus, same shape.
        r = await c.get("/api/v1/services/eval/health")
        assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable_error"


async def test_openapi_is_served(memory_bus: Bus) -> None:
    async with client(memory_bus) as c:
        spec = (await c.get("/openapi.json")).json()
        assert "/api/v1/services" in spec["paths"] and spec["info"]["title"] == "Halo Forge"


async def test_bearer_token_guards_the_api(memory_bus: Bus) -> None:
    async with client(memory_bus, token="s3cret-token-0123456789") as c:
        r = await c.get("/api/v1/services")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        ok = await c.get("/api/v1/services", headers={"Authorization": "Bearer s3cret-token-0123456789"})
        assert ok.status_code == 200
        assert (await c.get("/health")).status_code == 200  # health stays open for probes


async def test_one_trace_spans_gateway_bus_and_service(bus: Bus, registry: Registry) -> None:
    exporter = InMemorySpanExporter()
    install_tracer_provider("test", exporter)
    async with client(bus) as c:
        r = await c.get("/api/v1/services/registry/health")
    assert r.status_code == 200 and r.json()["service"] == "registry"
    spans = exporter.get_finished_spans()
    (gw,) = [s for s in spans if s.instrumentation_scope.name == "halo_gateway"]
    assert gw.attributes["url.path"] == "/api/v1/services/registry/health"
    rpc = {s.kind.name: s for s in spans if s.name == "rpc halo.rpc.registry.health"}
    assert set(rpc) == {"CLIENT", "SERVER"}
    assert gw.context.trace_id == rpc["CLIENT"].context.trace_id == rpc["SERVER"].context.trace_id
    # Parent chain: gateway -> bus client -> service handler.
    assert rpc["CLIENT"].parent.span_id == gw.context.span_id
    assert rpc["SERVER"].parent.span_id == rpc["CLIENT"].context.span_id


async def test_http_requests_are_counted_by_route_template(memory_bus: Bus) -> None:
    async with client(memory_bus) as c:
        for job in ("job-a", "job-b"):
            assert (await c.get(f"/api/v1/jobs/{job}")).status_code == 404
        text = (await c.get("/metrics")).text
    line = 'halo_http_requests_total{method="GET",route="/api/v1/jobs/{job_id}",status="404"} 2.0'
    assert line in text, "both ids count under one route label"
    assert "job-a" not in text
