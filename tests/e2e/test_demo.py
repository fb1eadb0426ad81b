"""``halo-forge demo`` end to end: starts the local stack (nats-server + every installed service as
processes), runs SFT, DPO and RAFT (rewarded by the regex_format verifier over the bus) on the tiny-model kit
through the gateway, prints the before/after comparison, and ``halo-forge down`` stops everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI = str(Path(sys.executable).parent / "halo-forge")


def test_demo_trains_sft_dpo_and_raft_through_the_stack(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HALO_GATEWAY_URL"}
    env.update({"HALO_HOME": str(tmp_path / "home"), "COLUMNS": "220", "OMP_NUM_THREADS": "1"})
    try:
        r = subprocess.run([CLI, "demo"], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        out = r.stdout
        assert "1/3 SFT" in out and "2/3 DPO" in out and "3/3 RAFT" in out and "before / after" in out
        rows = [line for line in out.splitlines() if line.startswith("│ What")]
        assert len(rows) == 4
        cow = next(row for row in rows if "cow" in row)
        cells = [c.strip() for c in cow.split("│")[1:-1]]
        assert cells[2] == "A cow says moo." and cells[3] == "A cow says moo!"  # learned, then preference-tuned
        runs = sorted((tmp_path / "home" / "runs").iterdir())  # ids sort by creation time
        assert len(runs) == 4
        summaries = [json.loads((run / "training_summary.json").read_text()) for run in runs]
        assert [s["method"] for s in summaries] == ["sft", "dpo", "sft", "raft"]  # RL warm-up SFT, then RAFT
        assert all(s["state"] == "succeeded" and s["weights_updated"] for s in summaries)
        assert summaries[0]["loss_last"] < 0.2 * summaries[0]["loss_first"]
        assert summaries[1]["extras"]["reward_accuracy"] == 1.0
        raft = summaries[3]["extras"]
        assert raft["eval_reward_after"] > raft["eval_reward_before"]
    finally:
        subprocess.run([CLI, "down"], capture_output=True, text=True, env=env, timeout=120)
    assert not (tmp_path / "home" / "stack.json").exists()
