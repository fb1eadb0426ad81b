"""trainer-mlx on the bus through the gateway (in-memory bus, one process): a spec with ``backend: mlx`` is routed
to trainer-mlx, trains, publishes the same events and summary as trainer-torch; preview and cancel work; a spec
MLX cannot honour ends failed naming the capability."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from halo_bus import InMemoryBus
from halo_clients.jobs import choose_route
from halo_clients.trainer_mlx import TrainerMlxClient
from halo_gateway.app import create_app
from halo_gateway.settings import GatewaySettings
from halo_schemas.jobs import JobState
from halo_schemas.training import SFTSpec
from halo_testing import await_until
from halo_trainer_mlx.service import TrainerMlx
from halo_trainer_mlx.settings import TrainerMlxSettings


@pytest.fixture
async def gateway(memory_bus: InMemoryBus) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(memory_bus, GatewaySettings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        yield client


@pytest.fixture
async def trainer(memory_bus: InMemoryBus, tmp_path: Path) -> AsyncIterator[TrainerMlx]:
    svc = TrainerMlx(TrainerMlxSettings(home=tmp_path / "home", ack_wait_s=5.0, status_interval_s=0.2), memory_bus)
    await svc.start()
    yield svc
    await svc.stop()


def _sft(data: Path, **kw: Any) -> dict[str, Any]:
    return {"model": "tiny://llama", "backend": "mlx", "data": {"train": str(data)}, "max_steps": 6, "batch_size": 4,
            "max_length": 128, "checkpoint_every_steps": 3, "progress_interval_s": 0, **kw}


async def _events(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/api/v1/runs/{run_id}/events", timeout=120)
    assert resp.status_code == 200
    return [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]


def test_backend_mlx_routes_to_trainer_mlx() -> None:
    assert choose_route("sft", "mlx").service == "trainer-mlx"
    assert choose_route("sft", "torch").service == "trainer-torch"


async def test_sft_job_over_the_bus(gateway: httpx.AsyncClient, trainer: TrainerMlx, chat_file: Path) -> None:
    resp = await gateway.post("/api/v1/jobs/sft", json=_sft(chat_file))
    assert resp.status_code == 200, resp.text
    job_id, run_id = resp.json()["job_id"], resp.json()["run_id"]
    events = await _events(gateway, run_id)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert kinds.count("checkpointed") == 2 and kinds.count("artifact-added") == 2
    assert [e["message"]["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["message"]["service"] for e in events} == {"trainer-mlx"}
    progress = [e["message"] for e in events if e["type"] == "progressed"]
    assert [p["step"] for p in progress] == list(range(1, 7))
    for p in progress:  # the metric names trainer-torch reports
        assert {"loss", "learning_rate", "grad_norm", "tokens_per_second", "memory_bytes"} <= set(p["metrics"])
    finished = events[-1]["message"]
    assert finished["state"] == "succeeded" and finished["summary"]["steps"] == 6
    assert finished["summary"]["outputs"]["adapter"].endswith(f"{run_id}/adapter")
    assert trainer.meters.steps.labels("sft")._value.get() == 6
    status = (await gateway.get(f"/api/v1/jobs/{job_id}")).json()
    assert status["state"] == "succeeded" and status["service"] == "trainer-mlx" and status["step"] == 6
    summary = json.loads((trainer.tsettings.paths.run_dir(run_id) / "training_summary.json").read_text())
    assert summary["state"] == "succeeded" and summary["backend"] == "mlx" and summary["steps"] == 6


async def test_refused_field_fails_the_job_naming_it(gateway: httpx.AsyncClient, trainer: TrainerMlx,
                                                     chat_file: Path) -> None:
    resp = await gateway.post("/api/v1/jobs/sft", json=_sft(chat_file, finetune="rslora"))
    job_id = resp.json()["job_id"]

    async def done() -> Any:
        status = (await gateway.get(f"/api/v1/jobs/{job_id}")).json()
        return status if status["state"] in ("failed", "succeeded") else None

    status = await await_until(done, 60, 0.2, "the refused job to end")
    assert status["state"] == "failed" and "rsLoRA" in status["error"] and "mlx" in status["error"]


async def test_preview_and_cancel(memory_bus: InMemoryBus, trainer: TrainerMlx, gateway: httpx.AsyncClient,
                                  chat_file: Path) -> None:
    client = TrainerMlxClient(memory_bus)
    preview = await client.preview("sft", SFTSpec.model_validate(_sft(chat_file)), num_samples=1)
    assert preview.ok and preview.backend == "mlx" and preview.records == 12
    assert any(seg.trained for seg in preview.samples[0].segments)
    refused = await client.preview("sft", SFTSpec.model_validate(_sft(chat_file, finetune="pissa")))
    assert not refused.ok and "PiSSA" in refused.problems[0]

    resp = await gateway.post("/api/v1/jobs/sft", json=_sft(chat_file, max_steps=5000, checkpoint_every_steps=1000))
    job_id = resp.json()["job_id"]

    async def running() -> Any:
        status = (await gateway.get(f"/api/v1/jobs/{job_id}")).json()
        return status if status["state"] == "running" and (status.get("step") or 0) >= 2 else None

    await await_until(running, 120, 0.2, "the job to be training")
    assert (await client.cancel(job_id)).cancel_requested

    async def cancelled() -> Any:
        status = (await gateway.get(f"/api/v1/jobs/{job_id}")).json()
        return status if status["state"] == JobState.CANCELLED else None

    status = await await_until(cancelled, 60, 0.2, "the job to be cancelled")
    assert 2 <= status["step"] < 5000
