"""``halo-forge train`` / ``halo-forge jobs`` against a real stack (nats-server, gateway and trainer-torch as
processes): live progress until the job ends, dry run, detach + cancel, and the three refusals before
training — a malformed dataset line or a model typo (before queueing), an unknown config key, an option the
backend cannot do."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from halo_common.backend import capabilities, detect_backend
from halo_testing.stack import ProcessStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = [{"messages": [{"role": "user", "content": f"What does a {a} say?"},
                         {"role": "assistant", "content": f"A {a} says {s}."}]}
           for a, s in [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("owl", "hoot")]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    s = ProcessStack(tmp_path_factory.mktemp("trainer-cli"), ["halo_gateway", "halo_trainer_torch"],
                     ready={"trainer-torch"}, env={"HALO_TRAINER_TORCH_STATUS_INTERVAL_S": "0.5"})
    yield s
    s.close()


@pytest.fixture(scope="module")
def data(stack: ProcessStack) -> Path:
    path = stack.root / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_train_streams_progress_until_the_job_ends(stack: ProcessStack, data: Path) -> None:
    r = stack.cli("train", "sft", "--model", "tiny://llama", "--data", str(data), "--max-steps", "6",
                  "--batch-size", "2", "--set", "max_length=64", "--set", "checkpoint_every_steps=3", "--name", "cli-run")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "queued sft job job-" in out and "succeeded" in out
    assert "6/6" in out and "loss" in out
    assert "checkpoint at step 3" in out and "adapter written" in out
    job_id = out.split("queued sft job ")[1].split()[0]
    listed = json.loads(stack.cli("jobs", "list", "--json").stdout)
    assert any(j["job_id"] == job_id and j["state"] == "succeeded" and j["step"] == 6 for j in listed)
    shown = stack.cli("jobs", "show", job_id)
    assert shown.returncode == 0 and "succeeded" in shown.stdout and "adapter" in shown.stdout


def test_dry_run_renders_trained_and_masked_tokens(stack: ProcessStack, data: Path) -> None:
    r = stack.cli("train", "sft", "--model", "tiny://llama", "--data", str(data), "--dry-run", "--samples", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "format messages, 5 training records" in r.stdout
    assert "sft.jsonl:1 · 11/32 tokens trained" in r.stdout and "A cow says moo." in r.stdout
    assert "spec and data are valid" in r.stdout


def test_unknown_config_key_is_named(stack: ProcessStack, data: Path, tmp_path: Path) -> None:
    config = tmp_path / "spec.yaml"
    config.write_text(f"model: tiny://llama\ndata: {data}\nlerning_rate: 0.001\n")
    r = stack.cli("train", "sft", "--config", str(config))
    assert r.returncode == 1
    assert "lerning_rate: unknown field" in r.stderr


def test_malformed_dataset_line_or_model_typo_is_refused_before_queueing(stack: ProcessStack, tmp_path: Path,
                                                                          data: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n" + '{"messages": [{"role": "user"}]\n')
    r = stack.cli("train", "sft", "--model", "tiny://llama", "--data", str(bad))
    assert r.returncode == 1
    assert "bad.jsonl:2:32: invalid JSON: Expecting ',' delimiter" in r.stderr and "queued" not in r.stdout
    r = stack.cli("train", "sft", "--model", str(tmp_path / "qwen-tpyo"), "--data", str(data))
    assert r.returncode == 1
    assert f"model not found: {tmp_path / 'qwen-tpyo'}" in r.stderr and "queued" not in r.stdout


@pytest.mark.skipif(capabilities().four_bit, reason="this host has a 4-bit path (bitsandbytes on a GPU)")
def test_qlora_is_refused_on_this_backend(stack: ProcessStack, data: Path) -> None:
    r = stack.cli("train", "sft", "--model", "tiny://llama", "--data", str(data), "--finetune", "qlora")
    assert r.returncode == 1
    assert f"four_bit is not supported on backend '{detect_backend()}'" in r.stderr


def test_detach_then_cancel(stack: ProcessStack, data: Path) -> None:
    r = stack.cli("train", "sft", "--model", "tiny://llama", "--data", str(data), "--max-steps", "100000",
                  "--batch-size", "2", "--detach")
    assert r.returncode == 0 and "halo-forge jobs follow" in r.stdout
    job_id = r.stdout.split("queued sft job ")[1].split()[0]
    deadline = time.monotonic() + 60
    while json.loads(stack.cli("jobs", "show", job_id, "--json").stdout)["status"]["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    c = stack.cli("jobs", "cancel", job_id)
    assert c.returncode == 0 and "cancel requested" in c.stdout
    follow = stack.cli("jobs", "follow", job_id)
    assert follow.returncode == 1 and "cancelled" in follow.stderr
    final = json.loads(stack.cli("jobs", "show", job_id, "--json").stdout)
    assert final["status"]["state"] == "cancelled" and final["finished"]["summary"]["steps"] < 100000
