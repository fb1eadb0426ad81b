"""GRPO on MLX: group-relative advantages on hand-computed numbers, the clipped objective and KL against the formula,
and learning on the tiny tag task (as trainer-torch's GRPO test): after a short SFT warm-up, GRPO with rollouts
sampled by MLX from the weights being trained and rewards from the verifier library raises the mean reward."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from halo_schemas.jobs import JobState
from halo_schemas.rl import GRPOSpec, VerifierRef
from halo_schemas.verifiers import VerifyContext
from halo_trainer_mlx.core.recipes.grpo import group_advantages, grpo_token_loss
from halo_trainer_mlx.core.runner import run_job
from halo_training.rewards import LocalTransport, VerifierReward

#: The tag task of trainer-torch's GRPO test: "tag:<word>" -> "<answer><word></answer>", partial credit per pattern.
TRAIN_WORDS = ["boat", "door", "chair", "iron", "river", "crab", "apple", "frog", "wolf", "cloud", "rain", "wind",
               "bear", "coral", "melon", "star", "ship", "ant", "fox", "salt", "owl", "tree", "piano", "deer", "bee",
               "bird", "lemon", "bread", "gold", "grape", "candle", "copper", "sun", "cat", "pearl", "table"]
HELD_OUT_WORDS = ["duck", "sugar", "horse", "dog", "plum", "sand", "road", "rock"]
TAG_PATTERNS = ["^<answer>", "</answer>$", "^<answer>[a-z]+</answer>$"]
TAG_VERIFIER = {"name": "regex_format", "params": {"patterns": TAG_PATTERNS}}


def _tags(path: Path, words: list[str]) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"tag:{w}"},
                                                     {"role": "assistant", "content": f"<answer>{w}</answer>"}]}) + "\n"
                            for w in words))
    return path


@pytest.fixture(scope="module")
def tag_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tags")
    return _tags(root / "train.jsonl", TRAIN_WORDS), _tags(root / "heldout.jsonl", HELD_OUT_WORDS)


@pytest.fixture(scope="module")
def warm_model(tag_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A short SFT warm-up on MLX: the format is partly right, so sampled rewards vary within a group."""
    s = run_job("sft", {"model": "tiny://llama", "backend": "mlx", "data": {"train": str(tag_data[0])},
                        "finetune": "full", "max_steps": 25, "batch_size": 8, "max_length": 64, "learning_rate": 3e-3,
                        "warmup_ratio": 0.0, "lr_scheduler": "constant", "checkpoint_every_steps": 1000,
                        "packing": False, "dtype": "float32"}, tmp_path_factory.mktemp("warm") / "sft")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    return s.outputs["final"]


def grpo_spec(model: str, data: tuple[Path, Path], **kw: Any) -> dict[str, Any]:
    base = {"model": model, "backend": "mlx", "data": {"train": str(data[0]), "eval": str(data[1])},
            "verifiers": [TAG_VERIFIER], "verifier_transport": "local", "finetune": "full", "max_steps": 24,
            "batch_size": 16, "num_generations": 8, "max_new_tokens": 16, "learning_rate": 1e-3, "warmup_ratio": 0.0,
            "lr_scheduler": "constant", "checkpoint_every_steps": 12, "eval_num_generations": 4, "max_length": 64,
            "dtype": "float32"}
    return {**base, **kw}


# ---- advantages and objective on hand-computed numbers --------------------------------------------
REWARDS = [1.0, 0.0, 0.0, 1.0, 0.2, 0.2, 0.2, 0.6]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_relative_advantages(scale: str) -> None:
    adv = group_advantages(np.array(REWARDS).reshape(2, 4), scale).reshape(-1)
    # group means 0.5 and 0.3; unbiased group stds sqrt(1/3) and 0.2; batch std of all 8: 0.4140393 (as TRL)
    centred = [0.5, -0.5, -0.5, 0.5, -0.1, -0.1, -0.1, 0.3]
    if scale == "group":
        expected = [c / (math.sqrt(1 / 3) + 1e-4) for c in centred[:4]] + [c / (0.2 + 1e-4) for c in centred[4:]]
    elif scale == "batch":
        expected = [c / (0.4140393 + 1e-4) for c in centred]
    else:
        expected = centred
    assert adv.tolist() == pytest.approx(expected, abs=1e-5)
    # a completion no verifier could check gets no advantage and is left out of its group's statistics
    with_none = group_advantages(np.array([[1.0, 0.0, np.nan, 1.0]]), "none")
    assert with_none[0].tolist() == pytest.approx([1 / 3, -2 / 3, 0.0, 1 / 3], abs=1e-6)


def test_clipped_objective_and_kl_match_the_formula() -> None:
    import mlx.core as mx

    spec = GRPOSpec.model_validate(grpo_spec("tiny://llama", (Path("t.jsonl"), Path("e.jsonl")), beta=0.1,
                                             batch_size=8))
    logp = mx.array([[-1.0, -2.0, -0.5], [-1.5, -0.2, -3.0]])
    old = mx.array([[-1.1, -1.8, -0.5], [-1.0, -0.2, -3.0]])
    ref = mx.array([[-1.0, -2.0, -1.0], [-1.0, -1.0, -3.0]])
    mask = mx.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = mx.array([1.0, -1.0])
    per_token, stats = grpo_token_loss(logp, old, ref, adv, mask, spec)
    lp, ol, rf = np.array(logp), np.array(old), np.array(ref)
    for b, a in enumerate([1.0, -1.0]):
        for t in range(3):
            ratio = math.exp(lp[b, t] - ol[b, t])
            surrogate = -min(ratio * a, min(max(ratio, 0.8), 1.2) * a)
            kl = math.exp(rf[b, t] - lp[b, t]) - (rf[b, t] - lp[b, t]) - 1
            assert float(per_token[b, t]) == pytest.approx(surrogate + 0.1 * kl, abs=1e-6)
    # ratio e^-0.5 < 0.8 with a negative advantage: clipped from below; nothing clipped above
    assert np.array(stats["clip_ratio_low"]).tolist() == [[0, 0, 0], [1, 0, 0]]
    assert float(stats["clip_ratio_high"].sum()) == 0.0


def test_rewards_keep_partial_credit_and_refuse_bad_params() -> None:
    from halo_common.errors import BadRequest

    reward = VerifierReward([VerifierRef(name="regex_format", params={"patterns": TAG_PATTERNS})],
                            LocalTransport(workers=2))
    try:
        reward.check()
        scored = reward.score(["<answer>cow</answer>", "<answer>co w", "nope"], [VerifyContext()] * 3)
    finally:
        reward.close()
    assert scored.total == pytest.approx([1.0, 1 / 3, 0.0], abs=1e-6)
    assert scored.success == [True, False, False]
    bad = VerifierReward([VerifierRef(name="regex_format", params={"patern": "x"})], LocalTransport(workers=1))
    with pytest.raises(BadRequest, match="patern"):
        bad.check()


# ---- learning ------------------------------------------------------------------------------------
def test_grpo_raises_the_mean_verifier_reward(warm_model: str, tag_data: tuple[Path, Path], tmp_path: Path) -> None:
    s = run_job("grpo", grpo_spec(warm_model, tag_data), tmp_path / "run")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    ex = s.extras
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 25))
    for key in ("reward_mean", "reward_std", "reward_regex_format_mean", "pass_rate", "completion_length",
                "clip_ratio", "weights_version", "grad_norm"):
        assert key in train_rows[-1], key
    # rollouts come from the weights being trained: one new version per optimizer step
    assert [r["weights_version"] for r in train_rows] == [float(i) for i in range(24)]
    first = sum(r["reward_mean"] for r in train_rows[:6]) / 6
    last = sum(r["reward_mean"] for r in train_rows[-6:]) / 6
    assert last > first + 0.03, (first, last)  # measured: +0.07 .. +0.13 over seeds 0-2
    assert ex["eval_on"] == "eval" and ex["eval_prompts"] == len(HELD_OUT_WORDS)
    assert ex["eval_reward_after"] > ex["eval_reward_before"], (ex["eval_reward_before"], ex["eval_reward_after"])
    assert s.steps == 24 and s.weights_updated and ex["verifier_calls"] >= 24
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {r["step"] for r in samples} == set(range(1, 25))
    assert all(r["weights_version"] == r["step"] - 1 for r in samples)
    assert "final" in s.outputs


def test_unsupported_grpo_fields_are_refused_before_loading(tag_data: tuple[Path, Path], tmp_path: Path) -> None:
    s = run_job("grpo", grpo_spec("tiny://llama", tag_data, loss_type="cispo"), tmp_path / "a")
    assert s.state == JobState.FAILED and "loss_type='cispo'" in (s.failure_reason or "")
    assert "mlx backend" in (s.failure_reason or "") and s.steps == 0


def test_preview_renders_the_rollout_prompts(tag_data: tuple[Path, Path]) -> None:
    from halo_trainer_mlx.core.preview import preview_job

    res = preview_job("grpo", grpo_spec("tiny://llama", tag_data), num_samples=2)
    assert res.ok, res.problems
    assert len(res.samples) == 2 and all(s.part == "prompt" and s.num_trained_tokens == 0 for s in res.samples)
    assert "tag:boat" in res.samples[0].segments[0].text


def test_preempted_grpo_with_lora_and_kl_resumes_to_the_same_run(warm_model: str, tag_data: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    from halo_training.reporting import JobControl, Reporter
    from halo_training.runs import Preempted

    class StopAt(Reporter):
        def __init__(self, control: JobControl) -> None:
            self.control = control

        def progress(self, step: int, total_steps: int | None, metrics: dict[str, float]) -> None:
            if step >= 2:
                self.control.preempt()

    spec = grpo_spec(warm_model, tag_data, finetune="lora", lora={"dropout": 0.0}, beta=0.05, max_steps=4,
                     batch_size=8, num_generations=4, max_new_tokens=8, checkpoint_every_steps=2, learning_rate=1e-2,
                     eval_num_generations=1, eval_max_prompts=2, progress_interval_s=0)
    straight = run_job("grpo", spec, tmp_path / "straight")
    control = JobControl()
    with pytest.raises(Preempted):
        run_job("grpo", spec, tmp_path / "resumed", control=control, reporter=StopAt(control))
    resumed = run_job("grpo", spec, tmp_path / "resumed", attempt=2)
    assert straight.state == resumed.state == JobState.SUCCEEDED, resumed.failure_reason
    assert resumed.resumed_from_step == 2 and resumed.steps == 4
    a, b = ([json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
            for r in ("straight", "resumed"))
    assert [r["step"] for r in b] == list(range(1, 5))  # no step twice
    for x, y in zip(a, b, strict=True):  # the same rollouts (seeded per generation) from the same weights
        assert x["reward_mean"] == pytest.approx(y["reward_mean"], abs=1e-6)
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5) and x["kl"] == pytest.approx(y["kl"], abs=1e-6)
    assert b[-1]["kl"] > 0.0  # the adapter moved the policy away from the reference
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "samples.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == list(range(1, 5)) and len(steps) == 4 * 4
    assert set(resumed.outputs) == {"adapter", "adapter_mlx"}
