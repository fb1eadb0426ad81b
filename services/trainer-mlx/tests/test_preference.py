"""DPO with an adapter on MLX: the reference is the base (adapter off), or none (reference-free); the preference is
learned and the run exports both adapter formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from halo_schemas.jobs import JobState
from halo_trainer_mlx.core.runner import run_job

TOPICS = ["river", "mountain", "forest", "ocean", "desert", "city", "garden", "bridge"]


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    rows = [{"prompt": f"Describe the {t}.", "chosen": f" The {t} is lovely.", "rejected": f" The {t} is awful."}
            for t in TOPICS]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(("extra", "reference"), [({}, "base"), ({"reference_free": True}, "none")])
def test_dpo_lora_learns_the_preference(tmp_path: Path, pairs: Path, extra: dict[str, Any], reference: str) -> None:
    spec = {"model": "tiny://llama", "backend": "mlx", "data": {"train": str(pairs)}, "max_steps": 15,
            "batch_size": 4, "learning_rate": 1e-2, "max_length": 64, "lora": {"dropout": 0.0},
            "checkpoint_every_steps": 100, **extra}
    summary = run_job("dpo", spec, tmp_path / "run")
    assert summary.state == JobState.SUCCEEDED, summary.failure_reason
    assert summary.extras["reference"] == reference and summary.extras["loss_type"] == "sigmoid"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    if reference == "base":  # adapter B starts at zero: the policy equals the reference at step 1
        assert rows[0]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
        assert rows[0]["loss"] == pytest.approx(0.6931472, abs=1e-5)
    assert rows[-1]["reward_margin"] > rows[0]["reward_margin"] + 0.1
    assert summary.extras["reward_accuracy"] >= 0.75
    assert set(summary.outputs) == {"adapter", "adapter_mlx"}
