"""Replay of security issue #18 against the real pieces: an exposed gateway (token), real nats-server, a real
trainer-torch worker and the real registry.

The attack: a stranger imports a bundle whose ``adapter/`` holds a ``config.json`` with ``auto_map`` and a
Python file, then submits ``POST /api/v1/jobs/sft`` with that path as ``model`` and ``"trust_remote_code":
true``. Here the crafted Python file writes a marker file when imported; it must never appear.

* setting off (``HALO_ALLOW_REMOTE_CODE`` default): 403 naming the field and the setting, nothing queued;
* setting on, model inside an imported run (``imported.json``) or under ``HALO_HOME/incoming``: 403 too;
* setting on at the gateway but off on the worker (defence in depth): the job fails with the reason, and the
  registry still knows the run's method, name and model;
* without trust_remote_code the crafted model trains on its built-in architecture, never importing its code;
* exposed gateway: local paths outside HALO_HOME and HALO_GATEWAY_DATA_ROOTS are refused (symlinks resolved).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from halo_bus import NatsBus
from halo_common.natsproc import NatsProcess
from halo_common.paths import IMPORTED_MARKER
from halo_gateway.app import create_app
from halo_gateway.settings import GatewaySettings
from halo_models.tiny import make_tiny_cached
from halo_registry.service import Registry
from halo_registry.settings import RegistrySettings
from halo_trainer_torch.service import TrainerTorch
from halo_trainer_torch.settings import TrainerTorchSettings

pytestmark = pytest.mark.integration

TOKEN = "issue-18-replay-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def craft_model(target: Path, marker: Path) -> Path:
    """A tiny Llama whose config and tokenizer config point ``auto_map`` at Python files that write ``marker``
    when imported (the attacker's payload)."""
    shutil.copytree(make_tiny_cached(arch="llama"), target)
    payload = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pwned')\n"
    (target / "modeling_evil.py").write_text(
        payload + "from transformers import LlamaForCausalLM\n\n\nclass EvilForCausalLM(LlamaForCausalLM):\n    pass\n")
    (target / "tokenization_evil.py").write_text(
        payload + "from transformers import PreTrainedTokenizerFast\n\n\nclass EvilTok(PreTrainedTokenizerFast):\n"
        "    pass\n")
    cfg = json.loads((target / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (target / "config.json").write_text(json.dumps(cfg))
    tcfg = json.loads((target / "tokenizer_config.json").read_text())
    tcfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTok", "tokenization_evil.EvilTok"]}
    (target / "tokenizer_config.json").write_text(json.dumps(tcfg))
    return target


@dataclass
class Stack:
    home: Path
    marker: Path
    imported_model: Path  # inside a run imported from a bundle
    incoming_model: Path  # under HALO_HOME/incoming
    local_model: Path  # the same payload in HALO_HOME/models (not imported)
    data: Path
    trainer: TrainerTorch
    registry: Registry
    buses: list[NatsBus]
    url: str

    async def gateway(self, **settings: Any) -> httpx.AsyncClient:
        bus = await NatsBus.connect(self.url, name="gateway")
        self.buses.append(bus)
        app = create_app(bus, GatewaySettings(home=self.home, nats_url=self.url, host="0.0.0.0", token=TOKEN,
                                              **settings))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8420",
                                 headers=AUTH, timeout=120)


@pytest.fixture
async def stack(fresh_nats_server: NatsProcess, tmp_path: Path) -> AsyncIterator[Stack]:
    home = tmp_path / "home"
    marker = tmp_path / "PWNED"
    run = home / "runs" / "run-imported0001"
    craft_model(run / "adapter", marker)
    (run / IMPORTED_MARKER).write_text(json.dumps({"bundle": "stranger.tar.gz"}))
    incoming = craft_model(home / "incoming" / "upload-1" / "adapter", marker)
    local = craft_model(home / "models" / "crafted", marker)
    data = home / "data" / "chat.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"say {w}"},
                                                     {"role": "assistant", "content": w}]}) + "\n"
                            for w in ("moo", "woof", "meow", "quack")))
    url = fresh_nats_server.url
    # The worker keeps the default policy: no remote code, whatever a gateway lets through.
    trainer = TrainerTorch(TrainerTorchSettings(home=home, nats_url=url, ack_wait_s=10.0, status_interval_s=0.2),
                           await NatsBus.connect(url, name="trainer"))
    await trainer.start()
    registry = Registry(RegistrySettings(home=home, nats_url=url, ingest_ack_wait_s=2.0, drain_timeout_s=5.0),
                        await NatsBus.connect(url, name="registry"))
    await registry.start()
    st = Stack(home, marker, run / "adapter", incoming, local, data, trainer, registry, [], url)
    try:
        yield st
    finally:
        await trainer.stop()
        await trainer.bus.close()
        await registry.stop()
        await registry.bus.close()
        for bus in st.buses:
            await bus.close()


def sft(model: Path | str, data: Path, **kw: Any) -> dict[str, Any]:
    return {"model": str(model), "data": {"train": str(data)}, "max_steps": 2, "batch_size": 2, "max_length": 64,
            "progress_interval_s": 0, **kw}


async def finished_event(client: httpx.AsyncClient, run_id: str) -> tuple[list[str], dict[str, Any]]:
    resp = await client.get(f"/api/v1/runs/{run_id}/events")
    assert resp.status_code == 200, resp.text
    events = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]
    return [e["type"] for e in events], events[-1]["message"]


async def jobs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    resp = await client.get("/api/v1/jobs")
    assert resp.status_code == 200, resp.text
    return resp.json()["jobs"]


async def test_trust_remote_code_is_refused_unless_the_operator_allows_it(stack: Stack) -> None:
    async with await stack.gateway() as gw:
        assert (await gw.post("/api/v1/jobs/sft", json=sft(stack.imported_model, stack.data),
                              headers={"Authorization": "Bearer wrong-token-000000000000"})).status_code == 401
        for model in (stack.imported_model, stack.local_model):
            resp = await gw.post("/api/v1/jobs/sft", json=sft(model, stack.data, trust_remote_code=True))
            assert resp.status_code == 403, resp.text
            err = resp.json()["error"]
            assert err["type"] == "permission_error" and err["param"] == "trust_remote_code"
            assert "HALO_ALLOW_REMOTE_CODE" in err["message"]
            # The dry run loads the tokenizer: it is refused the same way.
            resp = await gw.post("/api/v1/jobs/sft/preview", json=sft(model, stack.data, trust_remote_code=True))
            assert resp.status_code == 403, resp.text
        assert await jobs(gw) == []  # nothing was queued
    assert not stack.marker.exists()


async def test_imported_models_never_run_their_code_even_when_allowed(stack: Stack) -> None:
    async with await stack.gateway(allow_remote_code=True) as gw:
        for model in (stack.imported_model, stack.incoming_model):
            resp = await gw.post("/api/v1/jobs/sft", json=sft(model, stack.data, trust_remote_code=True))
            assert resp.status_code == 403, resp.text
            err = resp.json()["error"]
            assert err["param"] == "trust_remote_code" and "imported bundle" in err["message"]
        assert await jobs(gw) == []
    assert not stack.marker.exists()


async def test_worker_refuses_remote_code_the_gateway_let_through(stack: Stack) -> None:
    async with await stack.gateway(allow_remote_code=True) as gw:
        resp = await gw.post("/api/v1/jobs/sft", json=sft(stack.local_model, stack.data, trust_remote_code=True,
                                                          name="let-through"))
        assert resp.status_code == 200, resp.text
        run_id = resp.json()["run_id"]
        kinds, finished = await finished_event(gw, run_id)
    assert kinds == ["started", "finished"]
    assert finished["state"] == "failed"
    assert "trust_remote_code is refused" in finished["error"] and "HALO_ALLOW_REMOTE_CODE" in finished["error"]
    assert not stack.marker.exists()
    # The registry keeps what the failed run was, not a run of method "unknown".
    for _ in range(200):
        run = stack.registry.store.summary(run_id) if _known(stack.registry, run_id) else None
        if run is not None and run.status.value == "failed":
            break
        await asyncio.sleep(0.05)
    assert run is not None and run.status.value == "failed"
    assert (run.method, run.name, run.base_model) == ("sft", "let-through", str(stack.local_model))


def _known(registry: Registry, run_id: str) -> bool:
    try:
        registry.store.summary(run_id)
        return True
    except Exception:  # NotFound until the first event is ingested
        return False


async def test_auto_map_code_is_never_imported_without_trust_remote_code(stack: Stack) -> None:
    async with await stack.gateway() as gw:
        resp = await gw.post("/api/v1/jobs/sft", json=sft(stack.imported_model, stack.data))
        assert resp.status_code == 200, resp.text
        kinds, finished = await finished_event(gw, resp.json()["run_id"])
    assert finished["state"] == "succeeded", finished.get("error")
    assert finished["summary"]["steps"] == 2
    assert not stack.marker.exists()


async def test_exposed_gateway_confines_paths_to_home_and_data_roots(stack: Stack, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.jsonl"
    shutil.copy(stack.data, secret)
    link = stack.home / "data" / "link.jsonl"
    link.symlink_to(secret)  # inside HALO_HOME by name, outside once resolved
    async with await stack.gateway() as gw:
        for spec, param in ((sft("tiny://llama", secret), "data.train"), (sft("tiny://llama", link), "data.train"),
                            (sft(outside, stack.data), "model")):
            resp = await gw.post("/api/v1/jobs/sft/preview", json=spec)
            assert resp.status_code == 403, resp.text
            err = resp.json()["error"]
            assert err["param"] == param and "HALO_GATEWAY_DATA_ROOTS" in err["message"]
        resp = await gw.post("/api/v1/jobs/sft", json=sft("tiny://llama", "data/chat.jsonl"))
        assert resp.status_code == 400 and "relative path" in resp.json()["error"]["message"]
        assert await jobs(gw) == []
    async with await stack.gateway(data_roots=[outside]) as gw:  # a configured data root is readable
        resp = await gw.post("/api/v1/jobs/sft/preview", json=sft("tiny://llama", secret), params={"samples": 1})
        assert resp.status_code == 200 and resp.json()["ok"], resp.text
