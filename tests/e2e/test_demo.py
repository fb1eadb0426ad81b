"""``halo-forge demo`` end to end: starts the local stack (nats-server + every installed service as
processes), runs SFT and DPO on the tiny-model kit through the gateway, evaluates base / SFT / DPO through the
eval service (lm-eval, the offline suite's demo task: SFT must gain), serves the DPO model and asks it a
question through the official ``openai`` SDK (streamed), runs RAFT, prints the before/after comparison, and
``halo-forge down`` stops everything.

The RL stage is rewarded for the right answer (``rouge`` against each record's expected answer, plus partial
credit for the format), so what this test checks is answer correctness: the share of exactly right answers
rises, each greedy answer the demo marks right is the expected one, and a well-formed wrong answer (the
reward hack of a format-only reward) is not a pass."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from halo_forge.client import GatewayClient
from halo_forge.commands.demo_rl import RL_DEMO_SAMPLES, TASK_DATA, right_answers

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI = str(Path(sys.executable).parent / "halo-forge")
TASK_FILE = Path(__file__).resolve().parents[2] / "services" / "trainer-torch" / "src" / "halo_trainer_torch" / "data" / \
    TASK_DATA.removeprefix("demo://")


def test_demo_trains_sft_dpo_and_raft_through_the_stack(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "HALO_GATEWAY_URL"}
    env.update({"HALO_HOME": str(home), "COLUMNS": "220", "OMP_NUM_THREADS": "1",
                "HALO_SERVE_PORT": "0"})  # any free port: another stack on this machine may hold the default
    try:
        r = subprocess.run([CLI, "demo"], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        out = r.stdout
        assert all(f"{i}/5 {stage}" in out for i, stage in enumerate(["SFT", "DPO", "eval", "serve", "RAFT"], 1))
        assert "before / after" in out
        rows = [line for line in out.splitlines() if line.startswith("│ What")]
        assert len(rows) == 4
        cow = next(row for row in rows if "cow" in row)
        cells = [c.strip() for c in cow.split("│")[1:-1]]
        assert cells[2] == "A cow says moo." and cells[3] == "A cow says moo!"  # learned, then preference-tuned
        # Served (run:<dpo run> through the gateway's /v1, the openai SDK, streamed), greedy: what DPO produced.
        assert "assistant: A cow says moo!" in out, out[-3000:]
        # Evaluated through the eval service (lm-eval): SFT learned the demo task; its delta is printed.
        evals = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
                 for line in out.splitlines() if line.startswith("│ halo_")}
        assert set(evals) == {"halo_animals_mc", "halo_arith_mc"}, out[-3000:]
        metric, base, after_sft, after_dpo, delta = evals["halo_animals_mc"]
        assert metric == "acc" and float(after_sft) >= float(base) + 0.3 and float(after_dpo) >= float(base) + 0.3
        assert float(delta) == pytest.approx(float(after_dpo) - float(base), abs=1.5e-3)
        # ids sort by creation time; the eval jobs have run directories of their own (no training summary)
        runs = sorted(r for r in (home / "runs").iterdir() if (r / "training_summary.json").is_file())
        assert len(runs) == 4
        summaries = [json.loads((run / "training_summary.json").read_text()) for run in runs]
        assert [s["method"] for s in summaries] == ["sft", "dpo", "sft", "raft"]  # RL warm-up SFT, then RAFT
        assert all(s["state"] == "succeeded" and s["weights_updated"] for s in summaries)
        assert summaries[0]["loss_last"] < 0.2 * summaries[0]["loss_first"]
        assert summaries[1]["extras"]["reward_accuracy"] == 1.0

        # RL learned the right answers, not just the format.
        raft = summaries[3]["extras"]
        records = TASK_FILE.read_text().splitlines()
        assert raft["eval_prompts"] == len(records) and raft["eval_samples"] == 8 * len(records)
        assert raft["eval_after_pass_rate"] > raft["eval_before_pass_rate"], raft
        assert raft["eval_after_reward_answer_mean"] > raft["eval_before_reward_answer_mean"], raft
        # A pass is a right answer: the answer verifier's mean reward is at least the pass rate (a pass scores 1).
        assert raft["eval_after_reward_answer_mean"] >= raft["eval_after_pass_rate"]
        assert f"pass rate (right answer) {raft['eval_before_pass_rate']:.3f} → {raft['eval_after_pass_rate']:.3f}" in out

        # The greedy answers table: every answer marked right is exactly the record's expected answer.
        expected = {json.loads(line)["messages"][0]["content"]: json.loads(line)["context"]["reference"]
                    for line in records}
        assert all(expected[p] == answer for p, answer in RL_DEMO_SAMPLES.items())
        marked = re.findall(r"│ (tag:\w+)\s+│ (\S+)\s+│ ([✓✗]) (right|wrong) (.*?)\s+│ ([✓✗]) (right|wrong) (.*?)\s+│", out)
        assert len(marked) == len(RL_DEMO_SAMPLES), out[-3000:]
        for prompt, want, _, before_mark, before, _, after_mark, after in marked:
            assert want == expected[prompt]
            assert (before_mark == "right") == (before == want), (prompt, before)
            assert (after_mark == "right") == (after == want), (prompt, after)

        # Through the running stack: the format-only reward hack is not a pass, the right word is.
        gateway = json.loads((home / "stack.json").read_text())["gateway_url"]
        client = GatewayClient(gateway, os.environ.get("HALO_TOKEN"))
        probes = [{"prompt": "tag:river", "after": "<answer>gr</answer>"},
                  {"prompt": "tag:river", "after": "<answer>lemon</answer>"},
                  {"prompt": "tag:river", "after": "river"},
                  {"prompt": "tag:river", "after": "<answer>river</answer>"}]
        assert right_answers(client, probes, "after") == [False, False, False, True]
    finally:
        subprocess.run([CLI, "down"], capture_output=True, text=True, env=env, timeout=120)
    assert not (home / "stack.json").exists()
