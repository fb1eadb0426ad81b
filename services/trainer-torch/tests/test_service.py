"""The job contract over the bus, through the gateway routes (in-memory bus, one process): submit, events,
status, cancel (running and queued), preview, and refusals."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from halo_bus import InMemoryBus, subjects
from halo_gateway.app import create_app
from halo_gateway.settings import GatewaySettings
from halo_schemas.events import RunFinished, RunProgressed
from halo_schemas.jobs import JobStatus
from halo_testing import await_until
from halo_trainer_torch.service import TrainerTorch
from halo_trainer_torch.settings import TrainerTorchSettings


def _settings(home: Path) -> TrainerTorchSettings:
    return TrainerTorchSettings(home=home, ack_wait_s=5.0, status_interval_s=0.2)


@pytest.fixture
async def gateway(memory_bus: InMemoryBus) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(memory_bus, GatewaySettings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        yield client


@pytest.fixture
async def trainer(memory_bus: InMemoryBus, tmp_path: Path) -> AsyncIterator[TrainerTorch]:
    svc = TrainerTorch(_settings(tmp_path / "home"), memory_bus)
    await svc.start()
    yield svc
    await svc.stop()


def _sft(data: Path, **kw: Any) -> dict[str, Any]:
    return {"model": "tiny://llama", "data": {"train": str(data)}, "max_steps": 6, "batch_size": 4, "max_length": 128,
            "checkpoint_every_steps": 3, "progress_interval_s": 0, **kw}


async def _events(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/api/v1/runs/{run_id}/events", timeout=120)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    return [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]


async def test_sft_job_end_to_end_over_the_bus(gateway: httpx.AsyncClient, trainer: TrainerTorch,
                                               sft_file: Path, memory_bus: InMemoryBus) -> None:
    resp = await gateway.post("/api/v1/jobs/sft", json=_sft(sft_file))
    assert resp.status_code == 200, resp.text
    job_id, run_id = resp.json()["job_id"], resp.json()["run_id"]
    events = await _events(gateway, run_id)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert kinds.count("checkpointed") == 2 and "artifact-added" in kinds
    seqs = [e["message"]["seq"] for e in events]
    assert seqs == sorted(set(seqs))  # strictly increasing, no duplicates
    progress = [e["message"] for e in events if e["type"] == "progressed"]
    assert [p["step"] for p in progress] == list(range(1, 7))
    for p in progress:
        assert {"loss", "learning_rate", "grad_norm", "tokens_per_second", "memory_bytes"} <= set(p["metrics"])
        assert p["metrics"].get("power_watts", 1.0) > 0  # absent when unknown, never 0
    finished = events[-1]["message"]
    assert finished["state"] == "succeeded" and finished["summary"]["steps"] == 6
    assert finished["summary"]["outputs"]["adapter"].endswith(f"{run_id}/adapter")
    status = (await gateway.get(f"/api/v1/jobs/{job_id}")).json()
    assert status["state"] == "succeeded" and status["step"] == 6 and status["attempt"] == 1
    listed = (await gateway.get("/api/v1/jobs")).json()["jobs"]
    assert [j["job_id"] for j in listed] == [job_id]
    run_dir = trainer.tsettings.paths.run_dir(run_id)
    assert json.loads((run_dir / "training_summary.json").read_text())["state"] == "succeeded"
    meters = trainer.meters
    assert meters.steps.labels("sft")._value.get() == 6
    assert meters.tokens.labels("sft")._value.get() == finished["summary"]["tokens"]
    assert meters.jobs.labels("sft", "succeeded")._value.get() == 1
    assert meters.checkpoints.labels("sft")._value.get() == 2 and meters.running._value.get() == 0
    # Each event carries a msg_id for dedup: republishing one is dropped.
    before = len(await memory_bus.replay(subjects.run_events_filter(run_id)))
    await memory_bus.publish_event(subjects.run_event("trainer-torch", run_id, "finished"),
                                   RunFinished.model_validate(finished), msg_id=f"{run_id}.{finished['seq']}")
    assert len(await memory_bus.replay(subjects.run_events_filter(run_id))) == before


async def test_dpo_progress_carries_reward_metrics(gateway: httpx.AsyncClient, trainer: TrainerTorch,
                                                   twin_pref_file: Path) -> None:
    spec = {"model": "tiny://llama", "data": {"train": str(twin_pref_file)}, "max_steps": 4, "batch_size": 8,
            "progress_interval_s": 0, "learning_rate": 1e-2}
    run_id = (await gateway.post("/api/v1/jobs/dpo", json=spec)).json()["run_id"]
    events = await _events(gateway, run_id)
    metrics = [e["message"]["metrics"] for e in events if e["type"] == "progressed"]
    assert all({"reward_margin", "reward_accuracy", "reward_chosen", "reward_rejected"} <= set(m) for m in metrics)
    assert events[-1]["message"]["state"] == "succeeded"


async def test_spec_errors_are_refused_at_the_gateway(gateway: httpx.AsyncClient, sft_file: Path) -> None:
    resp = await gateway.post("/api/v1/jobs/sft", json=_sft(sft_file, lerning_rate=1e-4))
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["param"] == "lerning_rate" and "lerning_rate: unknown field" in err["message"]
    resp = await gateway.post("/api/v1/jobs/dpo", json={"model": "m", "data": {"train": "x.jsonl"}, "loss_type": "cdpo"})
    assert resp.status_code == 400 and "label_smoothing > 0" in resp.json()["error"]["message"]
    resp = await gateway.post("/api/v1/jobs/ppo", json={})
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "method"


async def test_bad_data_fails_the_job_before_training(gateway: httpx.AsyncClient, trainer: TrainerTorch,
                                                      tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n{"messages": 1}\n')
    resp = await gateway.post("/api/v1/jobs/sft", json=_sft(bad, name="typo-run"))
    events = await _events(gateway, resp.json()["run_id"])
    # A run that ends before training still announces what it was (method, name, model) before it fails.
    assert [e["type"] for e in events] == ["started", "finished"]
    started = events[0]["message"]
    assert started["method"] == "sft" and started["base_model"] == "tiny://llama"
    assert started["spec"]["name"] == "typo-run" and started["total_steps"] is None
    assert events[1]["message"]["state"] == "failed"
    assert events[1]["message"]["error"].startswith("invalid training record: bad.jsonl:2: field 'messages'")
    status = (await gateway.get(f"/api/v1/jobs/{resp.json()['job_id']}")).json()
    assert status["state"] == "failed" and "bad.jsonl:2" in status["error"]


async def test_preview_renders_trained_and_masked_tokens(gateway: httpx.AsyncClient, trainer: TrainerTorch,
                                                        sft_file: Path) -> None:
    resp = await gateway.post("/api/v1/jobs/sft/preview?samples=2", json=_sft(sft_file))
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["ok"] and result["records"] == 12 and len(result["samples"]) == 2
    assert [s["trained"] for s in result["samples"][0]["segments"]] == [False, True, False]


async def _wait_for(memory_bus: InMemoryBus, run_id: str, kind: type, within_s: float = 60) -> Any:
    async def found() -> Any:
        return next((rec.message for rec in await memory_bus.replay(subjects.run_events_filter(run_id))
                     if isinstance(rec.message, kind)), None)

    return await await_until(found, within_s, 0.05, f"a {kind.__name__} event of {run_id}")


async def test_cancel_a_running_job(gateway: httpx.AsyncClient, trainer: TrainerTorch, sft_file: Path,
                                    memory_bus: InMemoryBus) -> None:
    resp = await gateway.post("/api/v1/jobs/sft", json=_sft(sft_file, max_steps=5000, checkpoint_every_steps=2))
    job_id, run_id = resp.json()["job_id"], resp.json()["run_id"]
    await _wait_for(memory_bus, run_id, RunProgressed)
    status = (await gateway.post(f"/api/v1/jobs/{job_id}/cancel")).json()
    assert status["cancel_requested"] is True
    finished = await _wait_for(memory_bus, run_id, RunFinished)
    assert finished.state == "cancelled" and 0 < finished.summary["steps"] < 5000
    final = await memory_bus.kv_get(subjects.KV_JOB_STATE, job_id, JobStatus)
    assert final is not None and final.state == "cancelled"
    again = (await gateway.post(f"/api/v1/jobs/{job_id}/cancel")).json()
    assert again["state"] == "cancelled"  # idempotent once terminal


async def test_cancel_a_queued_job_with_no_trainer_up(gateway: httpx.AsyncClient, memory_bus: InMemoryBus,
                                                      sft_file: Path, tmp_path: Path) -> None:
    resp = await gateway.post("/api/v1/jobs/sft", json=_sft(sft_file))
    job_id, run_id = resp.json()["job_id"], resp.json()["run_id"]
    status = (await gateway.post(f"/api/v1/jobs/{job_id}/cancel")).json()
    assert status["state"] == "queued" and status["cancel_requested"] is True
    svc = TrainerTorch(_settings(tmp_path / "home"), memory_bus)
    await svc.start()
    try:
        finished = await _wait_for(memory_bus, run_id, RunFinished)
    finally:
        await svc.stop()
    assert finished.state == "cancelled" and finished.error == "cancelled before it started"
    assert not (tmp_path / "home" / "runs" / run_id).exists()  # never started: nothing written


async def test_sigterm_preempts_with_a_checkpoint_and_another_trainer_resumes(
        gateway: httpx.AsyncClient, memory_bus: InMemoryBus, sft_file: Path, tmp_path: Path) -> None:
    settings = TrainerTorchSettings(home=tmp_path / "home", ack_wait_s=1.5, status_interval_s=0.2)
    first = TrainerTorch(settings, memory_bus)
    await first.start()
    resp = await gateway.post("/api/v1/jobs/sft", json=_sft(sft_file, max_steps=40, checkpoint_every_steps=1000))
    job_id, run_id = resp.json()["job_id"], resp.json()["run_id"]
    await _wait_for(memory_bus, run_id, RunProgressed)
    await first.stop()  # what SIGTERM does: stop consuming, drain (preempt running jobs)
    status = await memory_bus.kv_get(subjects.KV_JOB_STATE, job_id, JobStatus)
    assert status is not None and status.state == "queued" and "preempted" in (status.error or "")
    ckpts = sorted((tmp_path / "home" / "runs" / run_id / "checkpoints").iterdir())
    assert len(ckpts) == 1  # written at the step it stopped, although the interval is 1000
    stopped_at = int(ckpts[0].name.split("-")[1])
    second = TrainerTorch(settings, memory_bus)
    await second.start()
    try:
        finished = await _wait_for(memory_bus, run_id, RunFinished, within_s=120)
    finally:
        await second.stop()
    assert finished.state == "succeeded" and finished.summary["steps"] == 40
    assert finished.summary["resumed_from_step"] == stopped_at and finished.summary["attempts"] == 2


async def test_a_job_still_heartbeating_elsewhere_is_not_started_twice(
        memory_bus: InMemoryBus, trainer: TrainerTorch, sft_file: Path) -> None:
    from halo_common.ids import new_id
    from halo_schemas.base import utcnow
    from halo_schemas.jobs import JobEnvelope, JobState
    from halo_schemas.training import SFTSpec

    job_id, run_id = new_id("job"), new_id("run")
    alive = JobStatus(job_id=job_id, run_id=run_id, job_type="sft", service="trainer-torch", state=JobState.RUNNING,
                      worker="another-trainer", heartbeat_at=utcnow())
    await memory_bus.kv_put(subjects.KV_JOB_STATE, job_id, alive)
    spec = SFTSpec.model_validate(_sft(sft_file))
    await memory_bus.submit_job(subjects.job("trainer-torch", "sft"), JobEnvelope(
        job_id=job_id, run_id=run_id, job_type="sft", spec_schema=SFTSpec.schema_id, spec=spec.model_dump(mode="json")),
        msg_id=job_id)
    for _ in range(10):  # the other worker keeps heartbeating for a while...
        await asyncio.sleep(0.1)
        await memory_bus.kv_put(subjects.KV_JOB_STATE, job_id, alive.model_copy(update={"heartbeat_at": utcnow()}))
    assert job_id not in trainer.running
    # ...then finishes the job itself: this delivery is acknowledged without training anything here.
    await memory_bus.kv_put(subjects.KV_JOB_STATE, job_id, alive.model_copy(update={"state": JobState.SUCCEEDED}))
    await asyncio.sleep(0.6)
    assert not trainer.tsettings.paths.run_dir(run_id).exists()
    assert await memory_bus.replay(subjects.run_events_filter(run_id)) == []
