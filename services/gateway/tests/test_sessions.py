"""Browser sessions: the session store, CSRF, sign-in backoff (unit), and the same through the real app —
sign in with a token, cookie-authenticated reads, CSRF-guarded writes, revocation and sign-out, the public
dashboard files, the form's schema and catalog routes, and the telemetry stream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from halo_bus import Bus
from halo_gateway.app import create_app
from halo_gateway.core.sessions import (
    SessionStore,
    SignInRefused,
    SignInThrottle,
    TooManyRequests,
    csrf_matches,
    sign_in,
)
from halo_gateway.core.telemetry import TelemetryHub
from halo_gateway.routes.ui import STATIC
from halo_gateway.settings import GatewaySettings
from halo_schemas.methods import TRAINING_JOB_SPECS

TOKEN = "operator-token-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_end_and_follow_their_token() -> None:
    clock = Clock()
    store = SessionStore(ttl_s=60, clock=clock)
    a, b = store.create("digest-a", "laptop"), store.create("digest-b")
    assert a.id != b.id and a.csrf != a.id and len(a.id) >= 43
    assert store.get(a.id) is a and store.get("nope") is None and store.get(None) is None
    clock.now += 59.9
    assert store.get(a.id) is a
    clock.now += 0.2
    assert store.get(a.id) is None and len(store) == 0  # expired: gone
    c = store.create("digest-a")
    d = store.create("digest-a")
    assert store.end_for_token("digest-a") == 2 and store.get(c.id) is None and store.get(d.id) is None
    e = store.create("digest-c")
    assert store.end(e.id) and not store.end(e.id)


def test_session_store_is_bounded() -> None:
    store = SessionStore(ttl_s=60, max_sessions=3)
    ids = [store.create("d").id for _ in range(5)]
    assert [store.get(i) is not None for i in ids] == [False, False, True, True, True]


def test_csrf_needs_header_cookie_and_session_to_agree() -> None:
    s = SessionStore().create("d")
    assert csrf_matches(s, s.csrf, s.csrf)
    assert not csrf_matches(s, None, s.csrf) and not csrf_matches(s, s.csrf, None)
    assert not csrf_matches(s, "forged", "forged")  # double submit alone is not enough: bound to the session
    assert not csrf_matches(s, s.csrf, "other")


def test_failed_sign_ins_are_slowed_per_client_and_reset_by_success() -> None:
    clock = Clock()
    throttle = SignInThrottle(free_failures=3, base_delay_s=1, max_delay_s=8, clock=clock)
    assert [throttle.failed("a") for _ in range(3)] == [0, 0, 0]
    throttle.check("a")  # still free
    assert throttle.failed("a") == 1
    with pytest.raises(TooManyRequests) as info:
        throttle.check("a")
    assert info.value.code == 429 and 0 < info.value.retry_after_s <= 1
    throttle.check("b")  # another client is not slowed
    clock.now += 1
    assert [throttle.failed("a") for _ in range(4)] == [2, 4, 8, 8]  # doubling, capped
    throttle.succeeded("a")
    throttle.check("a")
    assert throttle.failures("a") == 0


def test_sign_in_counts_failures_and_opens_a_session_for_a_good_token() -> None:
    clock = Clock()
    store, throttle = SessionStore(clock=clock), SignInThrottle(free_failures=1, clock=clock)
    verify = {TOKEN: ("digest", "operator")}.get
    with pytest.raises(SignInRefused):
        sign_in(store, throttle, verify, "wrong", "1.2.3.4")
    with pytest.raises(SignInRefused, match="paused for 1 s"):
        sign_in(store, throttle, verify, "wrong again", "1.2.3.4")
    with pytest.raises(TooManyRequests):  # paused: even the right token waits
        sign_in(store, throttle, verify, TOKEN, "1.2.3.4")
    clock.now += 1.01
    session = sign_in(store, throttle, verify, f" {TOKEN} ", "1.2.3.4")
    assert session.label == "operator" and store.get(session.id) is session
    assert throttle.failures("1.2.3.4") == 0


def client(bus: Bus, home: Path, **settings: object) -> httpx.AsyncClient:
    app = create_app(bus, GatewaySettings(home=home, **settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


def _cookie_attrs(r: httpx.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h.lower() for h in r.headers.get_list("set-cookie")}


async def test_browser_signs_in_and_writes_need_the_csrf_header(tmp_path: Path, memory_bus: Bus) -> None:
    async with client(memory_bus, tmp_path, host="0.0.0.0", token=TOKEN) as c:
        assert (await c.get("/api/v1/auth/tokens")).status_code == 401
        state = (await c.get("/api/v1/auth/session")).json()
        assert state == {"auth_required": True, "exposed": True, "signed_in": False, "token_name": None,
                         "expires_in_s": None}
        bad = await c.post("/api/v1/auth/session", json={"token": "not-the-token-at-all"})
        assert bad.status_code == 401 and bad.json()["error"]["param"] == "token"
        ok = await c.post("/api/v1/auth/session", json={"token": TOKEN})
        assert ok.status_code == 200 and ok.json()["signed_in"] and ok.json()["token_name"] == "configured"
        attrs = _cookie_attrs(ok)
        assert "httponly" in attrs["halo_session"] and "samesite=strict" in attrs["halo_session"]
        assert "httponly" not in attrs["halo_csrf"] and "samesite=strict" in attrs["halo_csrf"]
        assert TOKEN not in json.dumps(dict(ok.headers))  # the token never comes back

        # Reads: the cookie is enough (this is how EventSource and downloads authenticate).
        assert (await c.get("/api/v1/auth/tokens")).json() == {"tokens": []}
        assert (await c.get("/api/v1/auth/session")).json()["signed_in"]
        # Writes: the cookie alone is a CSRF risk -> refused; with the header -> done.
        refused = await c.post("/api/v1/auth/tokens", json={"name": "laptop"})
        assert refused.status_code == 403 and refused.json()["error"]["param"] == "X-Halo-CSRF"
        forged = await c.post("/api/v1/auth/tokens", json={"name": "laptop"}, headers={"X-Halo-CSRF": "guess"})
        assert forged.status_code == 403
        csrf = {"X-Halo-CSRF": c.cookies["halo_csrf"]}
        created = await c.post("/api/v1/auth/tokens", json={"name": "laptop"}, headers=csrf)
        assert created.status_code == 200 and created.json()["token"].startswith("hfk_")
        laptop = created.json()["token"]
        assert [t["name"] for t in (await c.get("/api/v1/auth/tokens")).json()["tokens"]] == ["laptop"]
        # A bearer request needs no CSRF header (a browser never sends one by itself).
        r = await httpx.AsyncClient(transport=c._transport, base_url="http://127.0.0.1").post(
            "/api/v1/auth/tokens", json={"name": "ci"}, headers={"Authorization": f"Bearer {laptop}"})
        assert r.status_code == 200

        # Sign out: needs the header too, then the cookie opens nothing.
        assert (await c.delete("/api/v1/auth/session")).status_code == 403
        out = await c.delete("/api/v1/auth/session", headers=csrf)
        assert out.status_code == 200 and not out.json()["signed_in"]
        assert (await c.get("/api/v1/auth/tokens")).status_code == 401


async def test_revoking_a_token_ends_its_browser_sessions(tmp_path: Path, memory_bus: Bus) -> None:
    async with client(memory_bus, tmp_path, token=TOKEN) as admin, client(memory_bus, tmp_path, token=TOKEN) as browser:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        laptop = (await admin.post("/api/v1/auth/tokens", json={"name": "laptop"}, headers=auth)).json()["token"]
        assert (await browser.post("/api/v1/auth/session", json={"token": laptop})).json()["token_name"] == "laptop"
        assert (await browser.get("/api/v1/jobs")).status_code == 200
        assert (await admin.delete("/api/v1/auth/tokens/laptop", headers=auth)).status_code == 200
        assert (await browser.get("/api/v1/jobs")).status_code == 401
        assert not (await browser.get("/api/v1/auth/session")).json()["signed_in"]


async def test_repeated_failed_sign_ins_get_429_with_retry_after(tmp_path: Path, memory_bus: Bus) -> None:
    async with client(memory_bus, tmp_path, token=TOKEN) as c:
        codes = [(await c.post("/api/v1/auth/session", json={"token": f"wrong-{i}"})).status_code for i in range(5)]
        assert codes == [401, 401, 401, 401, 429]
        r = await c.post("/api/v1/auth/session", json={"token": TOKEN})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"


async def test_dashboard_files_are_public_and_everything_else_is_not(tmp_path: Path, memory_bus: Bus) -> None:
    async with client(memory_bus, tmp_path, host="0.0.0.0", token=TOKEN) as c:
        page = await c.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assets = sorted(p.name for p in (STATIC / "assets").iterdir())
        assert any(a.endswith(".js") for a in assets)
        for name in assets:
            assert f"/assets/{name}" in page.text or name.endswith(".css") or name.endswith(".js")
            r = await c.get(f"/assets/{name}")
            assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
        assert (await c.get("/assets/..%2Fsettings.py")).status_code in (401, 404)
        assert (await c.get("/assets/nope.js")).status_code == 404
        for path in ("/api/v1/telemetry", "/api/v1/jobs/sft/schema", "/api/v1/models/catalog"):
            assert (await c.get(path)).status_code == 401, path


async def test_form_schema_catalog_and_telemetry_routes(tmp_path: Path, memory_bus: Bus) -> None:
    async with client(memory_bus, tmp_path) as c:
        assert (await c.get("/api/v1/jobs/methods")).json()["methods"] == list(TRAINING_JOB_SPECS)
        schema = (await c.get("/api/v1/jobs/sft/schema")).json()
        assert schema == TRAINING_JOB_SPECS["sft"].model_json_schema() and "model" in schema["required"]
        nope = await c.get("/api/v1/jobs/nope/schema")
        assert nope.status_code == 404 and "sft" in nope.json()["error"]["message"]
        cat = (await c.get("/api/v1/models/catalog?backend=cpu&memory_gb=64")).json()
        assert cat["backend"] == "cpu" and "tiny://llama" in cat["tiny_models"] and len(cat["models"]) > 5
        assert all(m["supported"] is not None for m in cat["models"])
        assert any(m["recommended"] for m in cat["models"] if m["supported"])
        plain = (await c.get("/api/v1/models/catalog")).json()
        assert all(m["supported"] is None and m["recommended"] is None for m in plain["models"])
        bad = await c.get("/api/v1/models/catalog?backend=tpu")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "backend"

        frame = (await c.get("/api/v1/telemetry")).json()
        cpu = [d for d in frame["devices"] if d["kind"] == "cpu"]
        assert len(cpu) == 1 and cpu[0]["memory_total_bytes"] > 0 and frame["jobs"] == []


async def test_one_sampler_feeds_every_stream_and_stops_when_the_last_leaves() -> None:
    hub = TelemetryHub(interval_s=0.1)
    a, b = hub.frames(), hub.frames()
    first_a, first_b = await anext(a), await anext(b)
    assert hub.listeners == 2 and first_b["ts"] >= first_a["ts"]
    assert first_a["devices"][0]["kind"] == "cpu" and first_a["jobs"] == []
    second = await anext(a)
    assert second["ts"] > first_a["ts"]
    await a.aclose()
    assert hub.listeners == 1 and hub._task is not None
    await b.aclose()
    assert hub.listeners == 0 and hub._task is None  # nobody listens: no sampling
    ticks = hub.ticks
    await asyncio.sleep(0.3)
    assert hub.ticks == ticks
