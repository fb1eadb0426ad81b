"""GRPO and RAFT as durable jobs on a real stack: nats-server, verifier-sandbox and trainer-torch as real
processes; rewards are verified over the bus. A GRPO job learns (held-out reward +0.3) with the usual
lifecycle (status in KV, started -> progressed -> checkpointed -> artifact -> finished events, run directory,
summary, replay manifest); a RAFT trainer killed with SIGKILL mid-run is picked up by a second trainer,
which resumes at the cycle and stage where the first stopped without regenerating or re-verifying anything
the first finished."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from halo_bus import NatsBus, subjects
from halo_common.ids import new_id
from halo_common.natsproc import NatsProcess
from halo_schemas.events import RunArtifactAdded, RunCheckpointed, RunFinished, RunProgressed, RunStarted
from halo_schemas.health import HealthRequest, ServiceHealth
from halo_schemas.jobs import JobEnvelope, JobState, JobStatus
from halo_schemas.rl import GRPOSpec, RAFTSpec
from halo_testing import await_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACK_WAIT_S = 6.0
DATA = Path(__file__).resolve().parents[2] / "services" / "trainer-torch" / "src" / "halo_trainer_torch" / "data"
TRAIN, HELD_OUT = DATA / "rl_tags_train.jsonl", DATA / "rl_tags_heldout.jsonl"
TAG_VERIFIER = {"name": "regex_format", "params": {"patterns": ["^<answer>", "</answer>$", "^<answer>[a-z]+</answer>$"]}}


class Stack:
    def __init__(self, root: Path) -> None:
        self.root, self.home = root, root / "home"
        self.nats = NatsProcess.start(root / "nats", log_file=root / "nats.log")
        self.env = {**os.environ, "HALO_HOME": str(self.home), "HALO_NATS_URL": self.nats.url, "HALO_LOG_JSON": "false",
                    "HALO_TRAINER_TORCH_ACK_WAIT_S": str(ACK_WAIT_S), "HALO_TRAINER_TORCH_STATUS_INTERVAL_S": "0.5",
                    "HALO_VERIFIER_SANDBOX_WORKERS": "2", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.verifier = self.spawn("halo_verifier_sandbox", "verifier.log")
        self.trainers: list[subprocess.Popen[bytes]] = []

    def spawn(self, module: str, log: str) -> subprocess.Popen[bytes]:
        with (self.root / log).open("ab") as out:
            return subprocess.Popen([sys.executable, "-m", module], stdout=out, stderr=subprocess.STDOUT,
                                    env=self.env, start_new_session=True)

    def start_trainer(self) -> subprocess.Popen[bytes]:
        p = self.spawn("halo_trainer_torch", f"trainer{len(self.trainers) + 1}.log")
        self.trainers.append(p)
        return p

    def log(self, name: str) -> str:
        return (self.root / name).read_text()[-4000:]

    def close(self) -> None:
        for p in [*self.trainers, self.verifier]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [*self.trainers, self.verifier]:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.nats.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("rl-jobs"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def warm_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A short SFT warm-up on the bundled task (run in this process; the RL jobs start from it)."""
    from halo_trainer_torch.core.runner import run_job

    s = run_job("sft", {"model": "tiny://llama", "data": {"train": str(TRAIN)}, "finetune": "full", "max_steps": 40,
                        "batch_size": 8, "max_length": 64, "learning_rate": 3e-3, "warmup_ratio": 0.0,
                        "lr_scheduler": "constant", "checkpoint_every_steps": 1000, "packing": False,
                        "dtype": "float32"}, tmp_path_factory.mktemp("warm") / "sft")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    return s.outputs["final"]


@pytest.fixture
async def bus(stack: Stack) -> AsyncIterator[NatsBus]:
    b = await NatsBus.connect(stack.nats.url, name="rl-test")
    yield b
    await b.close()


async def wait_healthy(bus: NatsBus, service: str, proc: subprocess.Popen[bytes], log: str, stack: Stack,
                       within_s: float = 120) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{service} exited: {stack.log(log)}"
        try:
            h = await bus.request(subjects.rpc(service, "health"), HealthRequest(), ServiceHealth, timeout=1)
            if h.status in ("ok", "degraded"):
                return
        except Exception:
            pass
        await asyncio.sleep(0.3)
    raise AssertionError(f"{service} did not become healthy: {stack.log(log)}")


async def submit(bus: NatsBus, method: str, spec: Any) -> tuple[str, str]:
    job_id, run_id = new_id("job"), new_id("run")
    await bus.kv_put(subjects.KV_JOB_STATE, job_id, JobStatus(job_id=job_id, run_id=run_id, job_type=method,
                                                              service="trainer-torch", state=JobState.QUEUED))
    await bus.submit_job(subjects.job("trainer-torch", method),
                         JobEnvelope(job_id=job_id, run_id=run_id, job_type=method, spec_schema=type(spec).schema_id,
                                     spec=spec.model_dump(mode="json")), msg_id=job_id)
    return job_id, run_id


async def events(bus: NatsBus, run_id: str) -> list[Any]:
    return [r.message for r in await bus.replay(subjects.run_events_filter(run_id))]


async def wait_finished(bus: NatsBus, run_id: str, within_s: float) -> RunFinished:
    async def finished() -> list[RunFinished]:
        return [m for m in await events(bus, run_id) if isinstance(m, RunFinished)]

    return (await await_until(finished, within_s, 0.3, f"{run_id} to finish"))[-1]


async def test_grpo_job_learns_with_rewards_verified_over_the_bus(stack: Stack, bus: NatsBus, warm_model: str) -> None:
    trainer = stack.trainers[0] if stack.trainers else stack.start_trainer()
    await wait_healthy(bus, "verifier-sandbox", stack.verifier, "verifier.log", stack)
    await wait_healthy(bus, "trainer-torch", trainer, "trainer1.log", stack)
    spec = GRPOSpec.model_validate({
        "model": warm_model, "data": {"train": str(TRAIN), "eval": str(HELD_OUT)},
        "verifiers": [TAG_VERIFIER, {"name": "chrf", "weight": 0.1}],  # over the bus (the default transport)
        "finetune": "full", "max_steps": 60, "batch_size": 32, "num_generations": 8, "max_new_tokens": 24,
        "learning_rate": 1e-3, "warmup_ratio": 0.0, "lr_scheduler": "constant", "checkpoint_every_steps": 30,
        "eval_num_generations": 8, "max_length": 64, "dtype": "float32", "progress_interval_s": 0.0})
    job_id, run_id = await submit(bus, "grpo", spec)
    finished = await wait_finished(bus, run_id, within_s=240)
    assert finished.state == JobState.SUCCEEDED, (finished.error, stack.log("trainer1.log"))

    summary = finished.summary
    ex = summary["extras"]
    assert summary["method"] == "grpo" and summary["steps"] == 60 and summary["weights_updated"]
    assert ex["verifier_transport"] == "bus" and ex["verifier_calls"] >= 60
    assert [v["label"] for v in ex["verifiers"]] == ["regex_format", "chrf"]
    assert ex["eval_reward_after"] - ex["eval_reward_before"] >= 0.3, (ex["eval_reward_before"], ex["eval_reward_after"])
    assert ex["eval_after_reward_regex_format_mean"] > ex["eval_before_reward_regex_format_mean"]

    msgs = await events(bus, run_id)
    kinds = [type(m).__name__ for m in msgs]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished"
    progress = [m for m in msgs if isinstance(m, RunProgressed)]
    assert progress[-1].step == 60
    train_metrics = [p.metrics for p in progress if "loss" in p.metrics]
    assert {"reward_mean", "reward_regex_format_mean", "reward_chrf_mean", "pass_rate", "completion_length",
            "clip_ratio", "weights_version"} <= set(train_metrics[-1])
    assert all(isinstance(v, float) for p in progress for v in p.metrics.values())
    assert [m.step for m in msgs if isinstance(m, RunCheckpointed)] == [30, 60]
    assert [(m.kind, m.format) for m in msgs if isinstance(m, RunArtifactAdded)] == [("model", "hf")]
    assert isinstance(msgs[0], RunStarted) and msgs[0].method == "grpo"
    status = await bus.kv_get(subjects.KV_JOB_STATE, job_id, JobStatus)
    assert status is not None and status.state == JobState.SUCCEEDED and status.step == 60

    run = stack.home / "runs" / run_id
    replay = json.loads((run / "replay.json").read_text())
    assert replay["method"] == "grpo" and replay["spec"]["verifiers"][0]["name"] == "regex_format"
    assert replay["datasets"][0]["sha256"] and replay["datasets"][1]["location"].endswith("rl_tags_heldout.jsonl")
    on_disk = json.loads((run / "training_summary.json").read_text())
    assert on_disk["extras"]["eval_reward_after"] == ex["eval_reward_after"]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and set(samples[0]["rewards"]) == {"regex_format", "chrf"}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_raft_killed_mid_run_resumes_at_its_cycle_and_stage(stack: Stack, bus: NatsBus, warm_model: str) -> None:
    first = stack.trainers[0] if stack.trainers and stack.trainers[0].poll() is None else stack.start_trainer()
    log1 = f"trainer{stack.trainers.index(first) + 1}.log"
    await wait_healthy(bus, "verifier-sandbox", stack.verifier, "verifier.log", stack)
    await wait_healthy(bus, "trainer-torch", first, log1, stack)
    spec = RAFTSpec.model_validate({
        "model": warm_model, "data": {"train": str(TRAIN), "eval": str(HELD_OUT)}, "verifiers": [TAG_VERIFIER],
        "finetune": "full", "cycles": 5, "batch_size": 8, "num_generations": 8, "max_new_tokens": 24,
        "learning_rate": 2e-3, "lr_decay": 0.7, "warmup_ratio": 0.0, "lr_scheduler": "constant",
        "reward_threshold": 1.0, "keep_top_fraction": 1.0, "eval_num_generations": 8, "max_length": 64,
        "dtype": "float32"})
    job_id, run_id = await submit(bus, "raft", spec)
    run = stack.home / "runs" / run_id
    state_file = run / "raft_state.json"

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if "verify" in json.loads(state_file.read_text())["cycles"]["2"]["stages"]:
                break
        except (FileNotFoundError, KeyError, ValueError):
            pass
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"cycle 2 was never verified: {stack.log(log1)}")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    at_kill = json.loads(state_file.read_text())  # written atomically: exactly what the first trainer finished
    done_at_kill = {(int(k), s) for k, c in at_kill["cycles"].items() for s in c["stages"]}
    assert (2, "verify") in done_at_kill and (5, "checkpoint") not in done_at_kill
    frozen = {p.relative_to(run): sha(p) for p in (run / "cycles").rglob("*.jsonl") if p.name != "selected.jsonl"}
    status = await bus.kv_get(subjects.KV_JOB_STATE, job_id, JobStatus)
    assert status is not None and status.state == JobState.RUNNING  # nobody told the bus it died

    second = stack.start_trainer()
    log2 = f"trainer{len(stack.trainers)}.log"
    finished = await wait_finished(bus, run_id, within_s=240)
    assert finished.state == JobState.SUCCEEDED, (finished.error, stack.log(log2))
    ex = finished.summary["extras"]
    assert finished.summary["attempts"] == 2 and ex["raft_attempts"] == 2
    assert ex["eval_reward_after"] - ex["eval_reward_before"] >= 0.3, (ex["eval_reward_before"], ex["eval_reward_after"])

    final = json.loads(state_file.read_text())
    for k, c in final["cycles"].items():
        for stage, info in c["stages"].items():
            # what the killed trainer finished stays its work; everything else was done by the second one
            assert info["attempt"] == (1 if (int(k), stage) in done_at_kill else 2), (k, stage)
    assert len(final["cycles"]) == 5 and all("checkpoint" in c["stages"] for c in final["cycles"].values())
    # nothing the first trainer generated or verified was generated or verified again
    for rel, digest in frozen.items():
        stage = "generate" if rel.name == "samples.jsonl" else "verify"
        if (int(rel.parts[1]), stage) in done_at_kill:
            assert sha(run / rel) == digest, rel
    starts = [m for m in await events(bus, run_id) if isinstance(m, RunStarted)]
    assert len(starts) == 2 and starts[1].resumed_from_step is not None
    seqs = [m.seq for m in await events(bus, run_id)]
    assert len(seqs) == len(set(seqs))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, finished.summary["steps"] + 1))
    assert second.poll() is None
