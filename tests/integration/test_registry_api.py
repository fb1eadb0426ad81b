"""The registry's REST API through the real gateway app and the real registry service: queries,
mutations, bundle download/upload, and clear 4xx errors for bad input."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from halo_bus import InMemoryBus
from halo_gateway.app import create_app
from halo_gateway.settings import GatewaySettings
from halo_registry.service import Registry
from halo_registry.settings import RegistrySettings
from halo_testing import RunEmitter, loss_at

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, InMemoryBus, Registry]]:
    home = tmp_path / "home"
    bus = InMemoryBus()
    reg = Registry(RegistrySettings(home=home), bus)
    await reg.start()
    app = create_app(bus, GatewaySettings(home=home))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        yield client, bus, reg
    await reg.stop()
    await bus.close()


async def add_run(bus: InMemoryBus, reg: Registry, em: RunEmitter, steps: int = 30, **extra: float) -> None:
    evs = [em.started(total_steps=steps)] + [em.progressed(s, loss=loss_at(s), **extra) for s in range(steps)]
    evs.append(em.finished())
    for ev in evs:
        await bus.publish_event(em.subject(ev), ev, msg_id=em.msg_id(ev))
    for _ in range(500):
        try:
            if reg.store.summary(em.run_id).status.value == "succeeded":
                return
        except Exception:
            pass
        await asyncio.sleep(0.01)
    raise AssertionError("run not ingested")


GZIP = {"Content-Type": "application/gzip"}  # what `halo-forge runs import` sends


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


async def test_queries_and_mutations_over_rest(api) -> None:  # noqa: ANN001
    client, bus, reg = api
    a = RunEmitter("run-api-a", method="sft", base_model="Qwen/Qwen2-0.5B", spec={"tags": ["t1"], "lr": 1e-4})
    b = RunEmitter("run-api-b", method="dpo", base_model="tiny-llama", spec={"tags": ["t1", "t2"], "lr": 3e-4})
    await add_run(bus, reg, a)
    await add_run(bus, reg, b, reward=0.5)

    page = (await client.get("/api/v1/runs", params={"tag": "t1", "sort": "run_id", "facets": "true"})).json()
    assert [r["run_id"] for r in page["items"]] == ["run-api-a", "run-api-b"] and page["total"] == 2
    assert {f["value"]: f["count"] for f in page["facets"]["method"]} == {"sft": 1, "dpo": 1}
    page = (await client.get("/api/v1/runs?method=sft,dpo&model=qwen&limit=1")).json()
    assert [r["run_id"] for r in page["items"]] == ["run-api-a"]
    page = (await client.post("/api/v1/runs/search", json={"tag": ["t2"]})).json()
    assert [r["run_id"] for r in page["items"]] == ["run-api-b"]

    detail = (await client.get("/api/v1/runs/run-api-a")).json()
    assert detail["run"]["last_step"] == 29 and detail["cost"]["source"] == "nominal"
    m = (await client.get("/api/v1/runs/run-api-a/metrics", params={"names": "loss", "max_points": 10})).json()
    assert m["series"][0]["bucket_steps"] == 3 and len(m["series"][0]["values"]) == 10
    cmp = (await client.get("/api/v1/runs/compare?ids=run-api-a,run-api-b")).json()
    assert cmp["metrics"] == ["loss", "reward"]
    assert [d["key"] for d in cmp["config_diff"]] == ["lr", "run.base_model", "run.method", "tags"]
    cost = (await client.get("/api/v1/runs/run-api-b/cost?price_per_kwh=2")).json()
    assert cost["price_per_kwh"] == 2.0

    assert (await client.post("/api/v1/runs/run-api-a/tags", json={"add": ["keep"]})).json()["tags"] == ["keep", "t1"]
    await client.post("/api/v1/runs/run-api-a/notes", json={"notes": "n1"})
    await client.post("/api/v1/runs/run-api-a/notes", json={"notes": "n2", "append": True})
    assert (await client.get("/api/v1/runs/run-api-a")).json()["notes"] == "n1\n\nn2"
    rec = await client.post("/api/v1/runs/run-api-b/evals",
                            json={"results": [{"task": "gsm8k", "metric": "acc", "value": 0.4}]})
    assert rec.json()["recorded"] == 1
    grid = (await client.get("/api/v1/runs/grid")).json()
    assert grid["tasks"][0]["best_run_id"] == "run-api-b"

    gone = await client.delete("/api/v1/runs/run-api-a", params={"keep_artifacts": "false"})
    assert gone.status_code == 200 and gone.json()["run_id"] == "run-api-a"
    assert (await client.get("/api/v1/runs/run-api-a")).status_code == 404


@pytest.mark.parametrize(("method", "url", "kwargs", "status", "needle", "param"), [
    ("GET", "/api/v1/runs?colour=red", {}, 400, "colour: unknown field", "colour"),
    ("GET", "/api/v1/runs?offset=-1", {}, 400, "offset: Input should be greater than or equal to 0", "offset"),
    ("GET", "/api/v1/runs?limit=100000", {}, 400, "limit: Input should be less than or equal to 500", "limit"),
    ("GET", "/api/v1/runs?sort=-colour", {}, 400, "unknown sort field 'colour'", "sort"),
    ("GET", "/api/v1/runs?status=done", {}, 400, "status.0", "status.0"),
    ("GET", "/api/v1/runs?since=yesterday", {}, 400, "since", "since"),
    ("GET", "/api/v1/runs?limit=5&limit=6", {}, 400, "limit: given more than once", "limit"),
    ("POST", "/api/v1/runs/search", {"json": {"stauts": ["running"]}}, 400, "stauts: unknown field", "stauts"),
    ("GET", "/api/v1/runs/compare?ids=" + ",".join(f"run-{i}" for i in range(9)), {}, 400, "run_ids", "run_ids"),
    ("GET", "/api/v1/runs/compare?ids=run-x,run-y", {}, 404, "no run 'run-x', 'run-y'", "run_ids"),
    ("GET", "/api/v1/runs/run-nope", {}, 404, "no run 'run-nope'", "run_id"),
    ("GET", "/api/v1/runs/bad%20id", {}, 400, "run_id", "run_id"),
    ("GET", "/api/v1/runs/run-nope/metrics?max_points=1", {}, 400, "max_points", "max_points"),
    ("POST", "/api/v1/runs/run-nope/tags", {"json": {"add": ["has space"]}}, 400, "add.0", "add.0"),
    ("DELETE", "/api/v1/runs/run-nope?keep_artifacts=maybe", {}, 400, "keep_artifacts", "keep_artifacts"),
    ("POST", "/api/v1/runs/import", {"content": b""}, 400, "empty upload", "body"),
    ("POST", "/api/v1/runs/import", {"content": b"PK\x03\x04 not a tarball", "headers": GZIP}, 400, "not a readable Halo run bundle",
     "path"),
])
async def test_bad_input_gets_a_clear_4xx(api, method: str, url: str, kwargs: dict, status: int, needle: str,  # noqa: ANN001
                                          param: str) -> None:
    client, _bus, _reg = api
    resp = await client.request(method, url, **kwargs)
    assert resp.status_code == status, resp.text
    err = error_of(resp)
    assert needle in err["message"] and err["code"] == status and err["param"] == param


async def test_bundle_download_and_upload(api, tmp_path: Path) -> None:  # noqa: ANN001
    client, bus, reg = api
    em = RunEmitter("run-api-bundle")
    await add_run(bus, reg, em, steps=12)
    resp = await client.get("/api/v1/runs/run-api-bundle/bundle")
    assert resp.status_code == 200
    import hashlib

    assert hashlib.sha256(resp.content).hexdigest() == resp.headers["x-halo-bundle-sha256"]
    assert not list((reg.store.paths.home / "bundles").glob("*.tar.gz"))  # removed after streaming

    # Re-importing over the existing run needs replace; a tampered copy is refused.
    conflict = await client.post("/api/v1/runs/import", content=resp.content, headers=GZIP)
    assert conflict.status_code == 409 and "already exists" in error_of(conflict)["message"]
    ok = await client.post("/api/v1/runs/import?replace=true", content=resp.content, headers=GZIP)
    assert ok.status_code == 200 and ok.json()["run"]["origin"] == "imported"

    src = tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == "training_summary.json":
                data = json.dumps({"final_loss": 0.0}).encode()
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    bad = await client.post("/api/v1/runs/import?replace=true", content=out.getvalue(), headers=GZIP)
    assert bad.status_code == 400
    assert "checksum mismatch for 'training_summary.json'" in error_of(bad)["message"]
    assert not list((reg.store.paths.home / "incoming").iterdir())  # uploads and staging cleaned up


def _bundle_with_run_id(bundle: bytes, run_id: str) -> bytes:
    """A copy of ``bundle`` consistently rewritten for ``run_id`` (manifest checksums match), so only
    the id itself can be what an import refuses."""
    import hashlib

    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as src:
        members = {m.name: src.extractfile(m).read() for m in src.getmembers()}
    detail = json.loads(members["run.json"])
    detail["run"]["run_id"] = run_id
    members["run.json"] = json.dumps(detail).encode()
    manifest = json.loads(members.pop("MANIFEST.json"))
    manifest["run_id"] = run_id
    manifest["files"] = [{"path": n, "sha256": hashlib.sha256(d).hexdigest(), "size_bytes": len(d)}
                         for n, d in members.items()]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as dst:
        for name, data in [("MANIFEST.json", json.dumps(manifest).encode()), *members.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out.getvalue()


async def test_import_with_hostile_run_id_is_refused_and_destroys_nothing(api) -> None:  # noqa: ANN001
    """Issue #18 as reported: an empty run id with replace=true used to replace all of runs/."""
    client, bus, reg = api
    home = reg.store.paths.home
    for rid in ("run-keep-a", "run-keep-b"):
        await add_run(bus, reg, RunEmitter(rid), steps=5)
        (home / "runs" / rid).mkdir(parents=True, exist_ok=True)
        (home / "runs" / rid / "precious.txt").write_text(rid)
    bundle = (await client.get("/api/v1/runs/run-keep-a/bundle")).content
    for rid, problem in (("", "is empty"), ("\n", "contains '\\n'"), ("run-x\n", "contains '\\n'"), ("..", "'.'"),
                         ("a/b", "'/'"), ("é", "'é'")):
        for replace in ("true", "false"):
            resp = await client.post(f"/api/v1/runs/import?replace={replace}", content=_bundle_with_run_id(bundle, rid),
                                     headers=GZIP)
            assert resp.status_code == 400, (rid, resp.text)
            err = error_of(resp)
            assert err["param"] == "run_id" and "invalid run_id" in err["message"] and problem in err["message"], err
    for rid in ("run-keep-a", "run-keep-b"):
        assert (home / "runs" / rid / "precious.txt").read_text() == rid
        assert (await client.get(f"/api/v1/runs/{rid}")).json()["run"]["origin"] == "local"
    assert (await client.get("/api/v1/runs")).json()["total"] == 2
    assert not list((home / "incoming").iterdir())

    # A well-formed id imports, marked as imported, and can be shown and deleted like any run.
    ok = await client.post("/api/v1/runs/import", content=_bundle_with_run_id(bundle, "run-fresh"), headers=GZIP)
    assert ok.status_code == 200, ok.text
    marker = json.loads((home / "runs" / "run-fresh" / "imported.json").read_text())
    assert marker["run_id"] == "run-fresh" and marker["source"].startswith("halo-registry")
    assert (await client.get("/api/v1/runs/run-fresh")).status_code == 200
    assert (await client.delete("/api/v1/runs/run-fresh", params={"keep_artifacts": "false"})).status_code == 200
    assert (home / "runs" / "run-keep-a" / "precious.txt").is_file()


@pytest.mark.parametrize("path", ["", "/metrics", "/cost", "/replay", "/bundle"])
@pytest.mark.parametrize("bad", ["a%20b", "%C3%A9", "run-1%0A", "-run", "x" * 129])
async def test_hostile_run_ids_in_the_path_are_400(api, path: str, bad: str) -> None:  # noqa: ANN001
    client, _bus, _reg = api
    resp = await client.get(f"/api/v1/runs/{bad}{path}")
    assert resp.status_code == 400, resp.text
    err = error_of(resp)
    assert err["param"] == "run_id" and "invalid run_id" in err["message"]
    for method, url, kwargs in (("DELETE", f"/api/v1/runs/{bad}", {}),
                                ("POST", f"/api/v1/runs/{bad}/tags", {"json": {"add": ["x"]}}),
                                ("POST", f"/api/v1/runs/{bad}/notes", {"json": {"notes": "x"}})):
        resp = await client.request(method, url, **kwargs)
        assert resp.status_code == 400 and error_of(resp)["param"] == "run_id", (method, url, resp.text)


async def test_rollout_and_job_ids_are_400_on_real_nats(nats_bus, tmp_path: Path) -> None:  # noqa: ANN001
    """NATS KV refuses keys like 'a b' or 'é' (InvalidKeyError): the gateway answers 400 JSON, not
    500 text/plain."""
    app = create_app(nats_bus, GatewaySettings(home=tmp_path / "home"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        for url in ("/api/v1/rollout/jobs/{}", "/api/v1/jobs/{}"):
            for bad in ("a%20b", "%C3%A9", "job-1%0A", "a.b"):
                resp = await client.get(url.format(bad))
                assert resp.status_code == 400, (url, bad, resp.text)
                assert resp.headers["content-type"].startswith("application/json")
                err = error_of(resp)
                assert err["param"] == "job_id" and "invalid job_id" in err["message"], err
            resp = await client.get(url.format("job-nope"))
            assert resp.status_code == 404 and error_of(resp)["param"] == "job_id"
