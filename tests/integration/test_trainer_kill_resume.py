"""kill -9 of a real trainer process mid-job: a new trainer picks the job up after the lease expires, resumes
from the last complete checkpoint and finishes with the planned number of optimizer steps; nothing in the run
directory is corrupted (real nats-server, real ``python -m halo_trainer_torch`` processes)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from halo_bus import NatsBus, subjects
from halo_common.ids import new_id
from halo_common.natsproc import NatsProcess
from halo_schemas.events import RunCheckpointed, RunFinished, RunStarted
from halo_schemas.health import HealthRequest, ServiceHealth
from halo_schemas.jobs import JobEnvelope, JobState, JobStatus
from halo_schemas.training import SFTSpec
from halo_testing import await_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACK_WAIT_S = 6.0
STEPS = 120
SFT_RECORDS = [{"messages": [{"role": "user", "content": f"What does a {a} say?"},
                             {"role": "assistant", "content": f"A {a} says {s}."}]}
               for a, s in [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("owl", "hoot"),
                            ("frog", "ribbit"), ("bee", "buzz"), ("lion", "roar")]]


def start_trainer(home: Path, nats_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HALO_HOME": str(home), "HALO_NATS_URL": nats_url, "HALO_LOG_JSON": "false",
           "HALO_TRAINER_TORCH_ACK_WAIT_S": str(ACK_WAIT_S), "HALO_TRAINER_TORCH_STATUS_INTERVAL_S": "0.5",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "halo_trainer_torch"], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


async def wait_healthy(bus: NatsBus, proc: subprocess.Popen[bytes], log: Path, within_s: float = 90) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited; see {log}")
        try:
            await bus.request(subjects.rpc("trainer-torch", "health"), HealthRequest(), ServiceHealth, timeout=1)
            return
        except Exception:
            await asyncio.sleep(0.3)
    raise AssertionError("trainer did not become healthy")


async def wait_event(bus: NatsBus, run_id: str, pred: Any, within_s: float) -> Any:
    async def matching() -> Any:
        return next((rec.message for rec in await bus.replay(subjects.run_events_filter(run_id))
                     if pred(rec.message)), None)

    return await await_until(matching, within_s, 0.2, f"the awaited event of {run_id}")


async def test_kill_9_mid_job_resumes_from_checkpoint(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in SFT_RECORDS))
    nats = NatsProcess.start(tmp_path / "nats", log_file=tmp_path / "nats.log")
    bus = await NatsBus.connect(nats.url, name="test")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = start_trainer(home, nats.url, tmp_path / "trainer1.log")
        procs.append(first)
        await wait_healthy(bus, first, tmp_path / "trainer1.log")

        spec = SFTSpec.model_validate({"model": "tiny://llama", "data": {"train": str(data)}, "finetune": "lora",
                                       "max_steps": STEPS, "batch_size": 2, "max_length": 64,
                                       "checkpoint_every_steps": 10, "keep_checkpoints": 2, "learning_rate": 1e-2})
        job_id, run_id = new_id("job"), new_id("run")
        await bus.kv_put(subjects.KV_JOB_STATE, job_id, JobStatus(job_id=job_id, run_id=run_id, job_type="sft",
                                                                  service="trainer-torch", state=JobState.QUEUED))
        await bus.submit_job(subjects.job("trainer-torch", "sft"),
                             JobEnvelope(job_id=job_id, run_id=run_id, job_type="sft", spec_schema=SFTSpec.schema_id,
                                         spec=spec.model_dump(mode="json")), msg_id=job_id)

        ckpt = await wait_event(bus, run_id, lambda m: isinstance(m, RunCheckpointed) and m.step >= 20, within_s=120)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        killed_at = ckpt.step
        status = await bus.kv_get(subjects.KV_JOB_STATE, job_id, JobStatus)
        assert status is not None and status.state == JobState.RUNNING  # nobody told the bus it died

        second = start_trainer(home, nats.url, tmp_path / "trainer2.log")
        procs.append(second)
        finished = await wait_event(bus, run_id, lambda m: isinstance(m, RunFinished), within_s=180)
        assert finished.state == JobState.SUCCEEDED, (finished.error, (tmp_path / "trainer2.log").read_text()[-3000:])

        summary = finished.summary
        assert summary["steps"] == STEPS and summary["attempts"] == 2
        assert summary["resumed_from_step"] >= killed_at
        starts = [r.message for r in await bus.replay(subjects.run_events_filter(run_id))
                  if isinstance(r.message, RunStarted)]
        assert [s.resumed_from_step for s in starts] == [None, summary["resumed_from_step"]]
        seqs = [r.message.seq for r in await bus.replay(subjects.run_events_filter(run_id))]
        assert len(seqs) == len(set(seqs))  # the second worker continued the sequence

        run = home / "runs" / run_id
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))
        ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert ckpts == [f"checkpoint-{STEPS - 10}", f"checkpoint-{STEPS}"]
        for name in ckpts:
            state = json.loads((run / "checkpoints" / name / "trainer_state.json").read_text())
            assert state["global_step"] == int(name.split("-")[1])
        on_disk = json.loads((run / "training_summary.json").read_text())
        assert on_disk["state"] == "succeeded" and on_disk["steps"] == STEPS
        assert json.loads((run / "spec.json").read_text())["max_steps"] == STEPS
        assert (run / "adapter" / "adapter_model.safetensors").exists()
        final = await bus.kv_get(subjects.KV_JOB_STATE, job_id, JobStatus)
        assert final is not None and final.state == JobState.SUCCEEDED and final.attempt == 2
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        await bus.close()
        nats.stop()
