"""GRPO: verifier rewards combined exactly, TRL's advantages / clipped loss / KL checked on hand-computed
numbers through our trainer class, fresh weights in every rollout, and learning on the tiny model: the mean
verifier reward on held-out prompts rises by at least 0.3 after a short SFT warm-up."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from halo_common.errors import BadRequest, NotFound
from halo_schemas.jobs import JobState
from halo_schemas.rl import GRPOSpec, VerifierRef, resolve_labels
from halo_schemas.verifiers import VerifyContext, VerifyResult, VerifyStage
from halo_trainer_torch.core.components.hooks import JobControl, Reporter
from halo_trainer_torch.core.runner import Preempted, run_job
from halo_training.rewards import LocalTransport, VerifierReward, combine
from pydantic import ValidationError

DATA = Path(__file__).resolve().parents[1] / "src" / "halo_trainer_torch" / "data"
TRAIN, HELD_OUT = DATA / "rl_tags_train.jsonl", DATA / "rl_tags_heldout.jsonl"
#: The bundled task: "tag:<word>" -> "<answer><word></answer>", partial credit per pattern matched.
TAG_PATTERNS = ["^<answer>", "</answer>$", "^<answer>[a-z]+</answer>$"]
TAG_VERIFIER = {"name": "regex_format", "params": {"patterns": TAG_PATTERNS}}


def warm_up(out: Path, steps: int = 40) -> str:
    """A short SFT warm-up on the task: the format is partly right (held-out sampled reward ~0.5)."""
    s = run_job("sft", {"model": "tiny://llama", "data": {"train": str(TRAIN)}, "finetune": "full", "max_steps": steps,
                        "batch_size": 8, "max_length": 64, "learning_rate": 3e-3, "warmup_ratio": 0.0,
                        "lr_scheduler": "constant", "checkpoint_every_steps": 1000, "packing": False,
                        "dtype": "float32"}, out)
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    return s.outputs["final"]


@pytest.fixture(scope="module")
def warm_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return warm_up(tmp_path_factory.mktemp("warm") / "sft")


def grpo_spec(model: str, **kw: Any) -> dict[str, Any]:
    base = {"model": model, "data": {"train": str(TRAIN), "eval": str(HELD_OUT)}, "verifiers": [TAG_VERIFIER],
            "verifier_transport": "local", "finetune": "full", "max_steps": 60, "batch_size": 32, "num_generations": 8,
            "max_new_tokens": 24, "learning_rate": 1e-3, "warmup_ratio": 0.0, "lr_scheduler": "constant",
            "checkpoint_every_steps": 30, "eval_num_generations": 8, "max_length": 64,
            # float32 everywhere: CPUs with native bf16 would otherwise autocast, and numbers would differ by machine
            "dtype": "float32"}
    return {**base, **kw}


class Recorder(Reporter):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def started(self, **kw: Any) -> None:
        self.events.append(("started", kw))

    def progress(self, step: int, total_steps: int | None, metrics: dict[str, float]) -> None:
        self.events.append(("progress", (step, metrics)))

    def checkpointed(self, step: int, path: str) -> None:
        self.events.append(("checkpointed", step))


# ---- rewards ---------------------------------------------------------------------------------------
def _r(reward: float, success: bool, error_type: str | None = None, max_reward: float = 1.0) -> VerifyResult:
    return VerifyResult(verifier="v", reward=reward, success=success, stage=VerifyStage.SCORED, error_type=error_type,
                        metadata={"max_reward": max_reward})


def test_total_is_the_weighted_mean_of_the_verifiers_that_could_check() -> None:
    labels, weights = ["a", "b"], [0.75, 0.25]
    results = {"a": [_r(1.0, True), _r(0.4, False), _r(0.0, False, "unavailable"), _r(0.2, False, "internal")],
               "b": [_r(0.6, False), _r(1.0, True), _r(0.8, False), _r(0.0, False, "missing_context")]}
    total, success, compile_only, errors = combine(labels, weights, results)
    assert total[0] == pytest.approx(0.75 * 1.0 + 0.25 * 0.6)
    assert total[1] == pytest.approx(0.75 * 0.4 + 0.25 * 1.0)
    assert total[2] == pytest.approx(0.8)  # 'a' could not check: the mean of what could
    assert total[3] is None  # nobody could
    assert success == [False, False, False, False]
    assert errors == [None, None, "a: unavailable", "a: internal"]
    t, s, c, _ = combine(["x"], [1.0], {"x": [_r(0.5, True, max_reward=0.5), _r(1.0, True)]})
    assert c == [True, False] and s == [True, True]


def test_verifier_reward_scores_every_verifier_with_partial_credit() -> None:
    refs = [VerifierRef(name="regex_format", weight=3, params={"patterns": TAG_PATTERNS}),
            VerifierRef(name="json_structure", weight=1, params={"required_keys": ["a", "b"]})]
    reward = VerifierReward(refs, LocalTransport(workers=2))
    try:
        reward.check()
        batch = reward.score(["<answer>cow</answer>", "<answer>co w", '{"a": 1}', ""],
                             [VerifyContext()] * 4)
    finally:
        reward.close()
    assert batch.labels == ["regex_format", "json_structure"] and batch.weights == [0.75, 0.25]
    assert batch.reward("regex_format") == pytest.approx([1.0, 1 / 3, 0.0, 0.0], abs=1e-6)  # rounded to 6 places
    assert batch.reward("json_structure") == pytest.approx([0.0, 0.0, 0.75, 0.0])  # JSON with 1 of 2 keys
    assert batch.total == pytest.approx([0.75, 0.25, 0.1875, 0.0], abs=1e-6)
    stats = batch.stats()
    assert stats["reward_mean"] == pytest.approx((0.75 + 0.25 + 0.1875) / 4, abs=1e-6)
    assert stats["reward_regex_format_mean"] == pytest.approx((1 + 1 / 3) / 4, abs=1e-6)
    assert stats["pass_rate"] == 0.0 and stats["verifier_error_ratio"] == 0.0


def test_bad_verifier_specs_are_refused_by_name_before_training() -> None:
    reward = VerifierReward([VerifierRef(name="regex_format", params={"patern": "x"})], LocalTransport(workers=1))
    with pytest.raises(BadRequest, match="patern"):
        reward.check()
    with pytest.raises(NotFound):
        VerifierReward([VerifierRef(name="no_such_verifier")], LocalTransport(workers=1)).check()
    assert resolve_labels([VerifierRef(name="regex_format"), VerifierRef(name="regex_format"),
                           VerifierRef(name="multi", label="code")]) == ["regex_format", "regex_format_2", "code"]


def test_grpo_spec_validation_names_the_problem() -> None:
    ok = grpo_spec("tiny://llama")
    GRPOSpec.model_validate(ok)
    with pytest.raises(ValidationError, match="multiple of num_generations"):
        GRPOSpec.model_validate({**ok, "batch_size": 12})
    with pytest.raises(ValidationError, match="verifiers"):
        GRPOSpec.model_validate({**ok, "verifiers": []})
    with pytest.raises(ValidationError, match="pissa"):
        GRPOSpec.model_validate({**ok, "finetune": "pissa"})
    with pytest.raises(ValidationError, match="torch_compile is not supported by RL recipes"):
        GRPOSpec.model_validate({**ok, "torch_compile": True})
    with pytest.raises(ValidationError, match="lose_type"):
        GRPOSpec.model_validate({**ok, "lose_type": "dapo"})


# ---- TRL's advantages, clipping and KL through our trainer class, on hand-computed numbers -----------
G = 4  # generations per prompt


def _trainer(tmp_path: Path, model_dir: Path, rewards: list[float], **config: Any) -> Any:
    from datasets import Dataset
    from halo_trainer_torch.core.components.model import load_tokenizer
    from halo_trainer_torch.core.recipes.grpo import _trainer_cls
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig

    tok = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    eos = tok.eos_token_id

    def rollout(prompts: list[Any], trainer: Any) -> dict[str, Any]:
        ids = tok.apply_chat_template(prompts[0], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        return {"prompt_ids": [list(ids)] * len(prompts),
                "completion_ids": [[10 + j % G, 20 + j % G, eos][: 2 + j % 2] for j in range(len(prompts))],
                "logprobs": None}

    def reward(prompts: list[Any], completions: list[Any], **kw: Any) -> list[float]:
        return list(rewards)

    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2 * G, num_generations=G,
                      max_completion_length=8, report_to="none", use_cpu=True, bf16=False,
                      activation_checkpointing=False, disable_tqdm=True, **config)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"q{i}"}], "halo_index": i} for i in range(2)])
    return _trainer_cls()(model=model, reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tok,
                          rollout_func=rollout)


REWARDS = [1.0, 0.0, 0.0, 1.0, 0.2, 0.2, 0.2, 0.6]


def _batch() -> list[dict[str, Any]]:
    return [{"prompt": [{"role": "user", "content": f"q{i}"}], "halo_index": i} for i in (0, 1) for _ in range(G)]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecations, reached through TRL
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_relative_advantages(scale: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    trainer = _trainer(tmp_path, tiny_model_dir, REWARDS, scale_rewards=scale)
    trainer.model.train()
    out = trainer._generate_and_score_completions(_batch())
    # group means: 0.5 and 0.3; unbiased group stds: sqrt(1/3) and 0.2; batch std of all 8 rewards: 0.4140393
    centred = [0.5, -0.5, -0.5, 0.5, -0.1, -0.1, -0.1, 0.3]
    if scale == "group":
        expected = [c / (math.sqrt(1 / 3) + 1e-4) for c in centred[:4]] + [c / (0.2 + 1e-4) for c in centred[4:]]
    elif scale == "batch":
        mean = sum(REWARDS) / 8
        std = math.sqrt(sum((r - mean) ** 2 for r in REWARDS) / 7)
        assert std == pytest.approx(0.4140393, abs=1e-6)
        expected = [c / (std + 1e-4) for c in centred]
    else:
        expected = centred
    assert out["advantages"].tolist() == pytest.approx(expected, abs=1e-5)
    # completions end at EOS (kept, masked in after) and are right-padded
    assert out["completion_mask"].sum(1).tolist() == [2, 3, 2, 3, 2, 3, 2, 3]


# B=2 sequences of up to 3 tokens; the second has 2 real tokens.
LOGPS = [[-1.0, -2.0, -0.5], [-1.5, -0.2, -3.0]]
OLD = [[-1.1, -1.8, -0.5], [-1.0, -0.2, -3.0]]
REF = [[-1.0, -2.0, -1.0], [-1.0, -1.0, -3.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.0, -2.0]
EPS = 0.2


def _hand_per_token(beta: float) -> tuple[list[list[float]], list[list[float]], list[list[float]]]:
    """(per-token loss, per-token KL, ratio) from the formulas: -min(r A, clip(r, 1-eps, 1+eps) A) + beta KL,
    KL = exp(ref - logp) - (ref - logp) - 1 times the ratio r = exp(logp - old)."""
    loss, kls, ratios = [], [], []
    for b in range(2):
        row, krow, rrow = [], [], []
        for t in range(3):
            r = math.exp(LOGPS[b][t] - OLD[b][t])
            clipped = min(max(r, 1 - EPS), 1 + EPS)
            d = REF[b][t] - LOGPS[b][t]
            kl = (math.exp(d) - d - 1) * r
            row.append(-min(r * ADV[b], clipped * ADV[b]) + beta * kl)
            krow.append(kl)
            rrow.append(r)
        loss.append(row)
        kls.append(krow)
        ratios.append(rrow)
    return loss, kls, ratios


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_clipped_objective_and_kl_match_the_formula(loss_type: str, beta: float, tmp_path: Path,
                                                    tiny_model_dir: Path) -> None:
    trainer = _trainer(tmp_path, tiny_model_dir, REWARDS, loss_type=loss_type, beta=beta, epsilon=EPS)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    logps = torch.tensor(LOGPS)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    inputs = {"prompt_ids": torch.ones(2, 2, dtype=torch.long), "prompt_mask": torch.ones(2, 2, dtype=torch.long),
              "completion_ids": torch.ones(2, 3, dtype=torch.long), "completion_mask": torch.tensor(MASK),
              "advantages": torch.tensor(ADV), "old_per_token_logps": torch.tensor(OLD),
              "num_items_in_batch": torch.tensor(5)}
    if beta:
        inputs["ref_per_token_logps"] = torch.tensor(REF)
    loss = float(trainer._compute_loss(trainer.model, inputs))

    per_token, kls, ratios = _hand_per_token(beta)
    masked = [[per_token[b][t] * MASK[b][t] for t in range(3)] for b in range(2)]
    total, tokens = sum(map(sum, masked)), 5
    expected = {
        "grpo": sum(sum(masked[b]) / sum(MASK[b]) for b in range(2)) / 2,  # mean of per-sequence means
        "bnpo": total / tokens,  # tokens of the local batch
        "dr_grpo": total / (2 * 8),  # B x max_completion_length
        "dapo": total / 5,  # tokens of the whole (accumulated) batch: num_items_in_batch
    }[loss_type]
    assert loss == pytest.approx(expected, abs=1e-6)
    metrics = trainer._metrics["train"]
    # one token is clipped: ratio exp(-0.5) = 0.607 < 0.8 with a negative advantage
    assert ratios[1][0] < 1 - EPS
    assert metrics["clip_ratio/low_mean"][-1] == pytest.approx(1 / 5)
    assert metrics["clip_ratio/high_mean"][-1] == 0.0
    if beta:
        kl_mean = sum(kls[b][t] * MASK[b][t] for b in range(2) for t in range(3)) / tokens
        assert metrics["kl"][-1] == pytest.approx(kl_mean, abs=1e-6)
        assert kl_mean == pytest.approx((0.1065307 + 0.1487213 * math.exp(-0.5) + 0.2493290) / 5, abs=1e-6)
    else:
        assert "kl" not in metrics


def test_metric_names_are_ours() -> None:
    from halo_trainer_torch.core.recipes.grpo import rename_metrics

    got = rename_metrics({"reward": [0.5], "completions/mean_length": [3.0], "clip_ratio/region_mean": [0.1],
                          "completions/mean_terminated_length": [2.0], "rewards/verifiers/mean": [0.5],
                          "sampling/x/mean": [1.0], "kl": [0.2]})
    assert dict(got) == {"reward_mean": [0.5], "completion_length": [3.0], "clip_ratio": [0.1],
                         "sampling_x_mean": [1.0], "kl": [0.2]}


# ---- learning, events, samples, freshness ------------------------------------------------------------
def test_grpo_raises_held_out_reward_after_a_warm_up(warm_model: str, tmp_path: Path) -> None:
    rec = Recorder()
    s = run_job("grpo", grpo_spec(warm_model), tmp_path / "run", reporter=rec)
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    ex = s.extras
    before, after = ex["eval_reward_before"], ex["eval_reward_after"]
    assert ex["eval_on"] == "eval" and ex["eval_prompts"] == 16 and ex["eval_samples"] == 16 * 8
    assert after - before >= 0.3, (before, after)
    assert ex["eval_reward_gain"] == pytest.approx(after - before)
    assert ex["eval_after_pass_rate"] > ex["eval_before_pass_rate"]
    assert s.steps == 60 and s.weights_updated and ex["verifier_calls"] >= 60
    on_disk = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert on_disk["extras"]["eval_reward_before"] == before and on_disk["extras"]["eval_reward_after"] == after

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 61))
    for key in ("reward_mean", "reward_std", "reward_regex_format_mean", "reward_regex_format_std", "pass_rate",
                "completion_length", "clip_ratio", "weights_version", "verify_seconds", "generate_seconds"):
        assert key in train_rows[-1], key
    # Each step's rollout ran on the weights of the step before: one weights version per optimizer step.
    assert [r["weights_version"] for r in train_rows] == [float(i) for i in range(60)]
    assert sum(r["reward_mean"] for r in train_rows[-10:]) > sum(r["reward_mean"] for r in train_rows[:10])
    evals = [r for r in rows if "eval_reward_mean" in r]
    assert [r["step"] for r in evals] == [30, 60]  # every checkpoint, the final evaluation reused at 60

    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 60 * 4 and {r["step"] for r in samples} == set(range(1, 61))
    for r in samples:
        assert set(r) >= {"prompt", "completion", "reward", "rewards", "success", "weights_version"}
        assert r["weights_version"] == r["step"] - 1
    progress = [v[1] for k, v in rec.events if k == "progress"]
    assert progress and all(isinstance(v, float) for m in progress for v in m.values())
    assert [e for e in rec.events if e[0] == "checkpointed"] == [("checkpointed", 30), ("checkpointed", 60)]


def test_rollouts_sample_the_weights_being_trained(warm_model: str, tmp_path: Path) -> None:
    """The rollout backend wraps the policy module itself: after training, its next-token log-probs are those
    of the exported model (no stale copy anywhere)."""
    from halo_trainer_torch.core.recipes import grpo as grpo_recipe
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen: list[Any] = []
    original = grpo_recipe.RolloutFunc.__call__

    def spy(self: Any, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        seen.append(self)
        return original(self, prompts, trainer)

    grpo_recipe.RolloutFunc.__call__ = spy  # type: ignore[method-assign]
    try:
        s = run_job("grpo", grpo_spec(warm_model, max_steps=5, checkpoint_every_steps=100), tmp_path / "run")
    finally:
        grpo_recipe.RolloutFunc.__call__ = original  # type: ignore[method-assign]
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    backend = seen[-1].backend
    assert backend.weights_version == 4  # generations at steps 0..4, one update before each of the last four
    tok = AutoTokenizer.from_pretrained(s.outputs["final"])
    ids = tok.apply_chat_template([{"role": "user", "content": "tag:owl"}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)["input_ids"]
    fresh = AutoModelForCausalLM.from_pretrained(s.outputs["final"]).eval()
    with torch.no_grad():
        want = torch.log_softmax(fresh(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1).numpy()
    got = backend.next_token_logprobs(ids)
    assert abs(got - want).max() < 1e-4
    base = AutoModelForCausalLM.from_pretrained(warm_model).eval()
    with torch.no_grad():
        old = torch.log_softmax(base(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1).numpy()
    assert abs(got - old).max() > 1e-3  # and they are not the starting weights


class PreemptAt(JobControl):
    def __init__(self, run: Path, step: int) -> None:
        super().__init__()
        self.run, self.step = run, step

    def stop_reason(self) -> str | None:
        ckpt = self.run / "checkpoints" / f"checkpoint-{self.step}"
        return "preempted" if ckpt.exists() else super().stop_reason()


def test_preempted_grpo_resumes_to_the_planned_steps(warm_model: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    spec = grpo_spec(warm_model, max_steps=12, checkpoint_every_steps=4, eval_num_generations=2)
    with pytest.raises(Preempted):
        run_job("grpo", spec, run, control=PreemptAt(run, 4))
    assert {json.loads(line)["step"] for line in (run / "samples.jsonl").read_text().splitlines()} <= set(range(1, 6))
    s = run_job("grpo", spec, run, attempt=2)
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    assert s.steps == 12 and s.resumed_from_step is not None and s.resumed_from_step >= 4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 13))
    sample_steps = [json.loads(line)["step"] for line in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted(set(sample_steps)) == list(range(1, 13)) and len(sample_steps) == 12 * 4
    assert s.extras["eval_reward_before"] is not None  # measured once, kept across the resume


def test_grpo_with_lora_and_kl_through_trl_generate(warm_model: str, tmp_path: Path) -> None:
    s = run_job("grpo", grpo_spec(warm_model, finetune="lora", max_steps=4, beta=0.05, generation="trl",
                                  loss_type="grpo", learning_rate=5e-3, checkpoint_every_steps=100,
                                  eval_num_generations=1), tmp_path / "run")
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert all("kl" in r for r in train_rows) and "weights_version" not in train_rows[0]
    assert train_rows[-1]["kl"] > 0.0  # the policy moved away from the reference (adapter disabled)
    assert (Path(s.outputs["adapter"]) / "adapter_model.safetensors").exists()
    assert s.weights_updated and 0 < s.trainable_parameters < s.total_parameters  # type: ignore[operator]


def test_bad_verifier_params_fail_the_job_before_training(tmp_path: Path) -> None:
    spec = grpo_spec("tiny://llama", verifiers=[{"name": "regex_format", "params": {"patterns": ["("]}}])
    s = run_job("grpo", spec, tmp_path / "run")
    assert s.state == JobState.FAILED and "patterns[0]" in (s.failure_reason or "") and s.steps == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "context": {"expected_ouput": "3"}}) + "\n")
    s = run_job("grpo", grpo_spec("tiny://llama", data={"train": str(bad)}), tmp_path / "run2")
    assert s.state == JobState.FAILED and "bad.jsonl:1" in (s.failure_reason or "")
    assert "expected_ouput" in (s.failure_reason or "")
