"""kill -9 of a real trainer-mlx process mid-job (real nats-server, registry, gateway and ``python -m
halo_trainer_mlx`` processes): the job is redelivered to a new trainer-mlx after the lease expires, resumes from
the last complete checkpoint, finishes with the planned steps, and the registry holds exactly one loss point per
step (the steps trained twice were upserted, not duplicated)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from halo_testing import wait_until
from halo_testing.stack import ProcessStack

pytest.importorskip("mlx.core")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 60
ACK_WAIT_S = 5.0
RECORDS = [{"messages": [{"role": "user", "content": f"Name a {kind}."},
                         {"role": "assistant", "content": f"A {name} is a {kind}."}]}
           for kind, name in [("fruit", "pear"), ("tree", "oak"), ("bird", "wren"), ("fish", "cod"),
                              ("stone", "flint"), ("metal", "tin"), ("river", "Nile"), ("star", "Vega")]]


def test_kill_9_mid_job_resumes_and_registry_has_no_duplicate_points(tmp_path: Path) -> None:
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    env = {"HALO_TRAINER_MLX_ACK_WAIT_S": str(ACK_WAIT_S), "HALO_TRAINER_MLX_STATUS_INTERVAL_S": "0.5"}
    stack = ProcessStack(tmp_path, ["halo_registry", "halo_gateway", "halo_trainer_mlx"],
                         ready={"registry", "trainer-mlx"}, env=env)
    try:
        spec = {"model": "tiny://llama", "backend": "mlx", "data": {"train": str(data)}, "finetune": "lora",
                "max_steps": STEPS, "batch_size": 2, "max_length": 64, "checkpoint_every_steps": 10,
                "keep_checkpoints": 2, "learning_rate": 1e-2, "progress_interval_s": 0}
        sub = httpx.post(f"{stack.url}/api/v1/jobs/sft", json=spec, timeout=30).json()
        job_id, run_id = sub["job_id"], sub["run_id"]
        run = stack.home / "runs" / run_id

        def checkpoint_20() -> Any:
            return (run / "checkpoints" / "checkpoint-20" / "trainer_state.json").exists()

        wait_until(checkpoint_20, timeout=180, interval=0.1, what="checkpoint-20 of the first trainer")
        first = stack.procs[2]
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        killed_at = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir()
                        if p.name.startswith("checkpoint-"))
        stack.procs.append(stack._spawn("halo_trainer_mlx"))

        def finished() -> Any:
            status = httpx.get(f"{stack.url}/api/v1/jobs/{job_id}", timeout=10).json()
            return status if status["state"] in ("succeeded", "failed", "cancelled") else None

        status = wait_until(finished, timeout=300, interval=0.5, what="the resumed job to finish",
                            ignore=(httpx.HTTPError,))
        assert status["state"] == "succeeded", stack.logs()[-3000:]
        assert status["attempt"] == 2 and status["service"] == "trainer-mlx"

        summary = json.loads((run / "training_summary.json").read_text())
        assert summary["steps"] == STEPS and summary["attempts"] == 2 and summary["resumed_from_step"] >= killed_at
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"checkpoint-{STEPS - 10}",
                                                                          f"checkpoint-{STEPS}"]
        assert (run / "adapter" / "adapter_model.safetensors").exists()
        assert (run / "adapter_mlx" / "adapters.safetensors").exists()

        def loss_series() -> Any:
            m = httpx.get(f"{stack.url}/api/v1/runs/{run_id}/metrics",
                          params={"names": "loss", "max_points": 1000}, timeout=10).json()
            series = (m.get("series") or [{}])[0]
            return series if series.get("steps") and series["steps"][-1] == STEPS else None

        series = wait_until(loss_series, timeout=60, interval=0.5, what="the registry to ingest the run",
                            ignore=(httpx.HTTPError, KeyError))
        assert series["steps"] == list(range(1, STEPS + 1)) and series["points"] == STEPS
        assert series["values"][-1] == pytest.approx(rows[-1]["loss"], rel=1e-6)
    finally:
        stack.close()
