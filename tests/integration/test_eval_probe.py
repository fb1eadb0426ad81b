"""The training probe end to end (nats-server, gateway, trainer-torch and eval as processes): a spec's
``probe`` runs probe jobs on the eval service at checkpoints; a run made to regress (a learning rate that
destroys what the base model knew) is stopped and ends on good weights; a healthy run is left alone."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from halo_testing.stack import ProcessStack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

SUITE = Path(__file__).resolve().parents[2] / "services" / "eval" / "src" / "halo_eval" / "tasks" / "data"
PROBE = {"every_n_steps": 2, "tasks": ["halo_arith_mc"], "limit": 20, "tolerance": 0.05, "on_regression": "stop"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    s = ProcessStack(tmp_path_factory.mktemp("probe"), ["halo_gateway", "halo_trainer_torch", "halo_eval"],
                     ready={"trainer-torch", "eval"}, env={"HALO_TRAINER_TORCH_STATUS_INTERVAL_S": "0.5"},
                     healthy=("ok", "degraded"), timeout_s=180)
    yield s
    s.close()


def _train(stack: ProcessStack, spec: dict[str, Any], timeout_s: float = 900) -> dict[str, Any]:
    r = httpx.post(f"{stack.url}/api/v1/jobs/sft", json=spec, timeout=60)
    assert r.status_code in (200, 202), r.text
    job = r.json()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = httpx.get(f"{stack.url}/api/v1/jobs/{job['job_id']}", timeout=30).json()
        if st["state"] in ("succeeded", "failed", "cancelled"):
            assert st["state"] == "succeeded", f"{st}\n{stack.logs()[-4000:]}"
            run = stack.home / "runs" / job["run_id"]
            return {"run": run, **json.loads((run / "training_summary.json").read_text())}
        time.sleep(1)
    raise AssertionError(f"job did not finish:\n{stack.logs()[-4000:]}")


@pytest.fixture(scope="module")
def good_model(stack: ProcessStack) -> Path:
    """The tiny model after memorising the first 20 probe questions: a base with something to lose."""
    rows = [json.loads(x) for x in (SUITE / "arith_mc.jsonl").read_text().splitlines()[:20]]
    data = stack.root / "memorise.jsonl"
    data.write_text("".join(json.dumps({"text": f"{r['question']} = {r['choices'][r['gold']]}"}) + "\n" for r in rows))
    out = _train(stack, {"model": "tiny://llama", "data": {"train": str(data), "format": "text"}, "finetune": "full",
                         "max_steps": 80, "batch_size": 4, "learning_rate": 3e-3, "lr_scheduler": "constant",
                         "warmup_ratio": 0.0, "max_length": 32, "checkpoint_every_steps": 80})
    return out["run"] / "final"


def test_regressing_run_is_stopped_and_healthy_run_is_left_alone(stack: ProcessStack, good_model: Path) -> None:
    noise = stack.root / "noise.jsonl"
    noise.write_text("".join(json.dumps({"text": f"{i} {i * 7 % 13} {i % 5}"}) + "\n" for i in range(64)))
    base_spec = {"model": str(good_model), "data": {"train": str(noise), "format": "text"}, "batch_size": 4,
                 "max_length": 32, "checkpoint_every_steps": 2, "lr_scheduler": "constant", "warmup_ratio": 0.0}

    healthy = _train(stack, {**base_spec, "finetune": "lora", "learning_rate": 1e-7, "max_steps": 4, "probe": PROBE})
    probe = healthy["extras"]["probe"]
    assert healthy["steps"] == 4 and probe["stopped_at_step"] is None
    assert [p["step"] for p in probe["probes"]] == [2, 4] and all(p["ok"] for p in probe["probes"])
    base_acc = probe["baseline"]["halo_arith_mc"]
    assert base_acc >= 0.5                       # the memorised base has something to lose

    bad = _train(stack, {**base_spec, "finetune": "full", "learning_rate": 0.5, "max_steps": 8, "probe": PROBE})
    probe = bad["extras"]["probe"]
    assert bad["steps"] == 2 and probe["stopped_at_step"] == 2 and probe["last_good_checkpoint"] is None
    [first] = probe["probes"]
    assert not first["ok"] and first["regressed"][0]["task"] == "halo_arith_mc"
    assert first["tasks"]["halo_arith_mc"]["value"] < base_acc - 0.05
    # No checkpoint passed, so the run ends on the base weights, not on the regressed ones.
    from safetensors.torch import load_file

    exported, base = load_file(bad["run"] / "final" / "model.safetensors"), load_file(good_model / "model.safetensors")
    assert exported.keys() == base.keys() and all((exported[k] == base[k]).all() for k in base)
