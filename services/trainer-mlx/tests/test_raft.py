"""RAFT on MLX (as trainer-torch's RAFT test): after a short SFT warm-up on the tiny tag task, cycles of MLX sampling
from the current policy -> verifier rewards -> rejection -> SFT raise the mean verifier reward on held-out prompts;
a run preempted inside a cycle resumes at the stage where it stopped, without regenerating or re-verifying anything
finished."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from halo_schemas.jobs import JobState
from halo_trainer_mlx.core.runner import run_job
from halo_training.reporting import JobControl, Reporter
from halo_training.runs import Preempted

from .test_grpo import HELD_OUT_WORDS, TAG_VERIFIER, TRAIN_WORDS, tag_data  # noqa: F401

WARM_STEPS = 60


@pytest.fixture(scope="module")
def warm_model(tag_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> str:  # noqa: F811
    """A longer SFT warm-up than GRPO's: RAFT trains only on fully correct samples, so some must exist."""
    s = run_job("sft", {"model": "tiny://llama", "backend": "mlx", "data": {"train": str(tag_data[0])},
                        "finetune": "full", "max_steps": WARM_STEPS, "batch_size": 8, "max_length": 64,
                        "learning_rate": 3e-3, "warmup_ratio": 0.0, "lr_scheduler": "constant",
                        "checkpoint_every_steps": 1000, "packing": False, "dtype": "float32"},
                tmp_path_factory.mktemp("warm") / "sft")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    return s.outputs["final"]


def raft_spec(model: str, data: tuple[Path, Path], **kw: Any) -> dict[str, Any]:
    base = {"model": model, "backend": "mlx", "data": {"train": str(data[0]), "eval": str(data[1])},
            "verifiers": [TAG_VERIFIER], "verifier_transport": "local", "finetune": "full", "cycles": 3,
            "batch_size": 8, "num_generations": 8, "max_new_tokens": 16, "learning_rate": 2e-3, "lr_decay": 0.7,
            "warmup_ratio": 0.0, "lr_scheduler": "constant", "reward_threshold": 1.0, "keep_top_fraction": 1.0,
            "eval_num_generations": 4, "max_length": 64, "dtype": "float32"}
    return {**base, **kw}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_raft_raises_held_out_reward_after_a_warm_up(warm_model: str, tag_data: tuple[Path, Path],  # noqa: F811
                                                     tmp_path: Path) -> None:
    run = tmp_path / "run"
    s = run_job("raft", raft_spec(warm_model, tag_data), run)
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    ex = s.extras
    before, after = ex["eval_reward_before"], ex["eval_reward_after"]
    assert after - before >= 0.1, (before, after)  # measured: 0.79 -> 0.96..0.97 over seeds 0-1
    assert ex["eval_on"] == "eval" and ex["eval_prompts"] == len(HELD_OUT_WORDS)
    cycles = ex["cycles"]
    assert [c["cycle"] for c in cycles] == [1, 2, 3] and ex["trained_cycles"] == 3
    assert [c["learning_rate"] for c in cycles] == pytest.approx([2e-3, 1.4e-3, 9.8e-4])  # x0.7 per cycle
    for c in cycles:
        assert c["samples"] == len(TRAIN_WORDS) * 8 and c["kept"] == c["eligible"] > 0
        assert c["kept"] + sum(c["rejected"].values()) == c["samples"]
        assert 1 <= c["steps"] <= -(-c["kept"] // 8)  # one epoch over the kept samples (packed into rows)
    assert cycles[-1]["pass_rate"] > cycles[0]["pass_rate"]  # the policy's own samples got better cycle by cycle
    assert ex["kept_total"] == sum(c["kept"] for c in cycles)
    assert s.steps == sum(c["steps"] for c in cycles) and s.weights_updated
    state = json.loads((run / "raft_state.json").read_text())
    assert sorted(state["cycles"]) == ["1", "2", "3"]
    assert all(set(c["stages"]) == {"generate", "verify", "select", "train", "checkpoint"}
               for c in state["cycles"].values())
    # every kept sample passed the verifier fully; the policy is exported as on the other MLX recipes
    kept = [json.loads(line) for line in (run / "cycles" / "3" / "selected.jsonl").read_text().splitlines()]
    assert kept and all(r["total"] == 1.0 and r["success"] for r in kept)
    assert "final" in s.outputs


class StopAfterVerify(Reporter):
    """Preempts the run when cycle 2's verify stage is done (before select and train)."""

    def __init__(self, control: JobControl) -> None:
        self.control = control

    def progress(self, step: int, total_steps: int | None, metrics: dict[str, float]) -> None:
        if metrics.get("cycle") == 2.0 and metrics.get("raft_stage") == 2.0:
            self.control.preempt()


def test_a_preempted_raft_resumes_at_the_stage_where_it_stopped(warm_model: str,  # noqa: F811
                                                                tag_data: tuple[Path, Path],  # noqa: F811
                                                                tmp_path: Path) -> None:
    spec = raft_spec(warm_model, tag_data, cycles=2, prompts_per_cycle=8, num_generations=4, max_new_tokens=8,
                     eval_num_generations=1, eval_max_prompts=2, progress_interval_s=0)
    run = tmp_path / "run"
    control = JobControl()
    with pytest.raises(Preempted):
        run_job("raft", spec, run, control=control, reporter=StopAfterVerify(control))
    state = json.loads((run / "raft_state.json").read_text())
    assert set(state["cycles"]["2"]["stages"]) == {"generate", "verify"}
    files = {p: sha(run / "cycles" / p) for p in ("1/samples.jsonl", "1/verified.jsonl", "2/samples.jsonl",
                                                   "2/verified.jsonl")}
    resumed = run_job("raft", spec, run, attempt=2)
    assert resumed.state == JobState.SUCCEEDED, resumed.failure_reason
    state = json.loads((run / "raft_state.json").read_text())
    attempts = {k: {n: st["attempt"] for n, st in c["stages"].items()} for k, c in state["cycles"].items()}
    assert attempts == {"1": dict.fromkeys(("generate", "verify", "select", "train", "checkpoint"), 1),
                        "2": {"generate": 1, "verify": 1, "select": 2, "train": 2, "checkpoint": 2}}
    assert {p: sha(run / "cycles" / p) for p in files} == files  # nothing generated or verified twice
    assert resumed.resumed_from_step == state["cycles"]["1"]["stages"]["checkpoint"]["step"]
    assert resumed.extras["raft_attempts"] == 2 and [c["cycle"] for c in resumed.extras["cycles"]] == [1, 2]
