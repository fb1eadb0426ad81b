"""The submit path's checks before anything is queued: a typo in a model or data path is a 4xx answer naming
the resolved path (never a queued job that fails as method 'unknown'), relative paths are refused, and bad
data is reported at its file line and column."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from halo_bus import InMemoryBus, subjects
from halo_gateway.app import create_app
from halo_gateway.settings import GatewaySettings
from halo_schemas.jobs import JobStatus


@pytest.fixture
async def gateway(memory_bus: InMemoryBus, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(memory_bus, GatewaySettings(home=tmp_path / "home"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        yield client


@pytest.fixture
def chat(tmp_path: Path) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    return path


async def _queued(bus: InMemoryBus) -> list[JobStatus]:
    return [s for k in await bus.kv_keys(subjects.KV_JOB_STATE)
            if (s := await bus.kv_get(subjects.KV_JOB_STATE, k, JobStatus)) is not None]


async def test_missing_model_is_named_before_queueing(gateway: httpx.AsyncClient, memory_bus: InMemoryBus,
                                                      chat: Path, tmp_path: Path) -> None:
    missing = tmp_path / "models" / "qwen-typo"
    resp = await gateway.post("/api/v1/jobs/sft", json={"model": str(missing), "data": {"train": str(chat)}})
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"] == {"message": f"model not found: {missing}", "type": "not_found_error",
                                    "param": "model", "code": 404}
    resp = await gateway.post("/api/v1/jobs/dpo", json={"model": "tiny://llama", "ref_model": str(missing),
                                                        "data": {"train": str(chat)}})
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "ref_model"
    assert await _queued(memory_bus) == []


async def test_missing_or_unreadable_data_is_named_before_queueing(gateway: httpx.AsyncClient, memory_bus: InMemoryBus,
                                                                   tmp_path: Path) -> None:
    resp = await gateway.post("/api/v1/jobs/sft", json={"model": "tiny://llama",
                                                        "data": {"train": str(tmp_path / "chta.jsonl")}})
    assert resp.status_code == 404 and resp.json()["error"]["message"] == f"data not found: {tmp_path / 'chta.jsonl'}"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "broken" "x"}\n')
    resp = await gateway.post("/api/v1/jobs/sft", json={"model": "tiny://llama", "data": {"train": str(bad)}})
    assert resp.status_code == 422
    assert resp.json()["error"]["message"] == "data.train: bad.jsonl:2:19: invalid JSON: Expecting ',' delimiter"
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(10)))
    resp = await gateway.post("/api/v1/jobs/sft", json={"model": "tiny://llama", "data": {"train": str(qa)}})
    assert resp.status_code == 422 and resp.json()["error"]["param"] == "data.format"
    assert "from the fields [answer, question]" in resp.json()["error"]["message"]
    assert await _queued(memory_bus) == []
    # Mapped with data.columns, the same file is accepted and queued.
    resp = await gateway.post("/api/v1/jobs/sft", json={
        "model": "tiny://llama", "data": {"train": str(qa), "columns": {"prompt": "question", "completion": "answer"}}})
    assert resp.status_code == 200, resp.text
    assert [s.job_type for s in await _queued(memory_bus)] == ["sft"]


async def test_relative_paths_are_refused_not_resolved(gateway: httpx.AsyncClient, memory_bus: InMemoryBus,
                                                       chat: Path) -> None:
    for body, param in (({"model": "./models/m", "data": {"train": str(chat)}}, "model"),
                        ({"model": "tiny://llama", "data": {"train": "chat.jsonl"}}, "data.train"),
                        ({"model": "~/m", "data": {"train": str(chat)}}, "model"),
                        ({"model": "tiny://llama", "data": {"train": str(chat), "eval": "../held.jsonl"}}, "data.eval")):
        resp = await gateway.post("/api/v1/jobs/sft", json=body)
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["param"] == param and "is a relative path; send an absolute one" in err["message"]
    assert await _queued(memory_bus) == []


async def test_hub_ids_pass_the_preflight(gateway: httpx.AsyncClient, memory_bus: InMemoryBus, chat: Path) -> None:
    resp = await gateway.post("/api/v1/jobs/sft", json={"model": "Qwen/Qwen2.5-0.5B", "data": {"train": str(chat)}})
    assert resp.status_code == 200, resp.text


async def test_module_judges_are_remote_code(gateway: httpx.AsyncClient, chat: Path) -> None:
    spec = {"model": "tiny://llama", "data": {"train": str(chat)}, "batch_size": 8,
            "verifiers": [{"name": "llm_judge", "params": {"judge": "os:system"}}]}
    resp = await gateway.post("/api/v1/jobs/grpo", json=spec)
    assert resp.status_code == 403
    assert resp.json()["error"]["param"] == "verifiers[0].params.judge"
