"""Gateway security on the real app: exposure means a token on every route but /health (decided by the bind
setting), the token store, the Host allow-list, origins, content types, CORS, SSE 404 and the OpenAPI."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import httpx
import pytest
from halo_bus import Bus, InMemoryBus, subjects
from halo_common.tokens import TokenStore
from halo_gateway.app import create_app
from halo_gateway.settings import GatewaySettings
from halo_schemas.jobs import JobState, JobStatus

#: Every route that is not /health, including the documentation and the SSE stream.
GUARDED = [
    ("GET", "/api/v1/services"), ("GET", "/api/v1/jobs"), ("GET", "/api/v1/runs"), ("GET", "/metrics"),
    ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json"), ("GET", "/api/v1/runs/run-x/events"),
    ("POST", "/api/v1/jobs/sft"), ("DELETE", "/api/v1/runs/run-x"), ("GET", "/v1/models"), ("GET", "/nope"),
]


def app_client(bus: Bus, base_url: str = "http://127.0.0.1", **settings: object) -> httpx.AsyncClient:
    app = create_app(bus, GatewaySettings(**settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


async def test_exposed_gateway_creates_a_token_once_and_guards_every_route(
        tmp_path: Path, memory_bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    # The ASGI transport's peer is 127.0.0.1: the decision is by the bind setting, not by who connects.
    async with app_client(memory_bus, host="0.0.0.0", home=tmp_path) as c:
        err = capsys.readouterr().err
        tokens = [w for w in err.split() if w.startswith("hfk_")]
        assert len(tokens) == 1 and len(tokens[0]) == 4 + 43  # hfk_ + 256 bits, url-safe base64
        token = tokens[0]
        store_file = tmp_path / "auth" / "tokens.json"
        assert stat.S_IMODE(store_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(store_file.parent.stat().st_mode) == 0o700
        text = store_file.read_text()
        assert token not in text and hashlib.sha256(token.encode()).hexdigest() in text
        assert json.loads(text)["tokens"][0]["hint"] == token[-4:]

        assert (await c.get("/health")).status_code == 200
        for method, path in GUARDED:
            r = await c.request(method, path)
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"]["type"] == "authentication_error"
            assert r.headers["www-authenticate"] == "Bearer"
            wrong = await c.request(method, path, headers={"Authorization": "Bearer hfk_" + "x" * 43})
            assert wrong.status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        for path in ("/api/v1/jobs", "/metrics", "/docs", "/redoc", "/openapi.json"):
            assert (await c.get(path, headers=auth)).status_code == 200, path

    # A second start finds the stored token: nothing new is created or printed.
    async with app_client(memory_bus, host="0.0.0.0", home=tmp_path) as c:
        assert "hfk_" not in capsys.readouterr().err
        assert len(TokenStore(store_file).list()) == 1
        assert (await c.get("/api/v1/jobs", headers=auth)).status_code == 200


async def test_loopback_needs_a_token_once_one_exists(tmp_path: Path, memory_bus: Bus,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    async with app_client(memory_bus, home=tmp_path) as c:
        assert "hfk_" not in capsys.readouterr().err  # loopback: nothing created
        assert (await c.get("/api/v1/jobs")).status_code == 200
        store = TokenStore(tmp_path / "auth" / "tokens.json")
        token, _ = store.create("laptop")  # e.g. `halo-forge tokens create laptop` while the gateway runs
        for method, path in GUARDED:
            assert (await c.request(method, path)).status_code == 401, path
        assert (await c.get("/metrics", headers={"Authorization": f"Bearer {token}"})).status_code == 200
        store.revoke("laptop")
        assert (await c.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})).status_code == 200
        assert (await c.get("/api/v1/jobs")).status_code == 200  # no token anywhere: open again on loopback


async def test_operator_token_guards_every_route_but_health(tmp_path: Path, memory_bus: Bus) -> None:
    secret = "operator-given-token-0123"
    async with app_client(memory_bus, home=tmp_path, token=secret) as c:
        for method, path in GUARDED:
            assert (await c.request(method, path)).status_code == 401, path
        assert (await c.get("/openapi.json", headers={"Authorization": f"Bearer {secret}"})).status_code == 200
        assert (await c.get("/health")).status_code == 200
    assert not (tmp_path / "auth" / "tokens.json").exists()  # an operator-given token is not stored


def test_a_bad_operator_token_is_refused_without_echoing_it() -> None:
    from halo_common.settings import ConfigError, load_settings

    for bad in ("short-secret", "has a space in it 0123"):
        with pytest.raises(ConfigError) as exc:
            load_settings(GatewaySettings, token=bad)
        assert "HALO_GATEWAY_TOKEN" in str(exc.value) and bad not in str(exc.value)


@pytest.mark.parametrize(("host", "settings", "ok"), [
    ("127.0.0.1:8420", {}, True), ("localhost", {}, True), ("[::1]:8420", {}, True), ("127.9.9.9", {}, True),
    ("evil.example:8420", {}, False), ("192.168.1.20", {}, False),  # loopback bind: a LAN name is not ours
    ("forge.lan", {"allowed_hosts": ["forge.lan"]}, True),
    ("192.168.1.20:8420", {"host": "0.0.0.0"}, True),  # exposed: an IP literal cannot be a rebinding
    ("attacker.example", {"host": "0.0.0.0"}, False),
    ("10.1.2.3", {"host": "10.1.2.3"}, True),
])
async def test_host_allow_list(tmp_path: Path, memory_bus: Bus, host: str, settings: dict, ok: bool) -> None:
    token = "operator-given-token-0123"
    async with app_client(memory_bus, home=tmp_path, token=token, **settings) as c:
        r = await c.get("/api/v1/jobs", headers={"Host": host, "Authorization": f"Bearer {token}"})
        if ok:
            assert r.status_code == 200, r.text
        else:
            assert r.status_code == 400 and r.json()["error"]["param"] == "Host"
            assert (await c.get("/health", headers={"Host": host})).status_code == 400


async def test_state_changing_routes_take_only_their_content_types(tmp_path: Path, memory_bus: Bus) -> None:
    async with app_client(memory_bus, home=tmp_path) as c:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {"Content-Type": ctype} if ctype else {}
            r = await c.post("/api/v1/jobs/sft", content=b'{"model": "x"}', headers=headers)
            assert r.status_code == 415, (ctype, r.text)
            assert r.json()["error"] == {"message": r.json()["error"]["message"], "param": "Content-Type",
                                         "type": "unsupported_media_type_error", "code": 415}
            r = await c.post("/api/v1/runs/import", content=b"\x1f\x8b bundle", headers=headers)
            assert r.status_code == 415, ctype
        # The declared types pass the check (the route itself then answers).
        r = await c.post("/api/v1/jobs/sft", json={"nope": 1})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = await c.post("/api/v1/jobs/sft", content=b"{}", headers={"Content-Type": "application/json; charset=utf-8"})
        assert r.status_code == 400
        r = await c.post("/api/v1/runs/import", content=b"\x1f\x8b bundle", headers={"Content-Type": "application/gzip"})
        assert r.status_code != 415  # no registry here: 503 from the bus, past the content-type check
        # A body-less POST needs no content type.
        assert (await c.post("/api/v1/jobs/job-nope/cancel")).status_code == 404


async def test_cross_origin_writes_are_refused_and_cors_is_off_by_default(tmp_path: Path, memory_bus: Bus) -> None:
    async with app_client(memory_bus, home=tmp_path) as c:
        r = await c.post("/api/v1/jobs/job-nope/cancel", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["param"] == "Origin"
        same = await c.post("/api/v1/jobs/job-nope/cancel", headers={"Origin": "http://127.0.0.1"})
        assert same.status_code == 404
        pre = await c.options("/api/v1/jobs", headers={"Origin": "http://evil.example",
                                                       "Access-Control-Request-Method": "GET"})
        got = await c.get("/api/v1/jobs", headers={"Origin": "http://evil.example"})
        assert not any(h.startswith("access-control-") for h in [*pre.headers, *got.headers])
    async with app_client(memory_bus, home=tmp_path, cors_origins=["http://ui.example:3000"]) as c:
        pre = await c.options("/api/v1/jobs/sft", headers={"Origin": "http://ui.example:3000",
                                                           "Access-Control-Request-Method": "POST",
                                                           "Access-Control-Request-Headers": "content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://ui.example:3000"
        r = await c.post("/api/v1/jobs/job-nope/cancel", headers={"Origin": "http://ui.example:3000"})
        assert r.status_code == 404 and r.headers["access-control-allow-origin"] == "http://ui.example:3000"
        assert (await c.post("/api/v1/jobs/job-nope/cancel", headers={"Origin": "http://other.example"})).status_code == 403


async def test_events_of_an_unknown_run_are_a_404(tmp_path: Path) -> None:
    bus = InMemoryBus()
    async with app_client(bus, home=tmp_path) as c:
        r = await c.get("/api/v1/runs/run-nope/events")
        assert r.status_code == 404 and r.json()["error"]["param"] == "run_id"
        assert (await c.get("/api/v1/runs/-bad/events")).status_code == 400
        # A queued job's run is known before it has any event: the stream opens.
        await bus.kv_put(subjects.KV_JOB_STATE, "job-1", JobStatus(
            job_id="job-1", run_id="run-queued", job_type="sft", service="trainer-torch", state=JobState.QUEUED))
        r = await c.get("/api/v1/runs/run-queued/events", params={"follow": "false"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")


async def test_openapi_declares_bearer_auth_and_real_errors_only(memory_bus: Bus) -> None:
    async with app_client(memory_bus) as c:
        doc = (await c.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {**doc["components"]["securitySchemes"]["bearerAuth"],
                                                                  "type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearerAuth": []}]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert set(doc["components"]["schemas"]["Error"]["properties"]["error"]["required"]) == {
        "message", "type", "param", "code"}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            want = {"400"} if path in ("/health", "/api/v1/auth/session") else {"400", "401", "404"}
            if method in ("post", "put", "patch", "delete"):
                want |= {"403", "409", "415", "422"}
            else:
                assert "422" not in op["responses"], (method, path)  # FastAPI's validation 422 is never sent
            assert want <= set(op["responses"]), (method, path)
            for code, response in op["responses"].items():
                if code >= "400":
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"}, (method, path, code)
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert set(doc["paths"]["/api/v1/runs/import"]["post"]["requestBody"]["content"]) >= {"application/gzip"}
    assert "text/event-stream" in doc["paths"]["/api/v1/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]
