"""Sampling and scoring for RL recipes: the in-process rollout backend around the policy, held-out reward
evaluation, and the ``samples.jsonl`` log of completions with their rewards.

::

    backend = rollout_backend(policy, tokenizer, spec)              # wraps the module, never copies it
    results = backend.generate(requests_for(prompts, tok, spec, n=8, seed=7))
    ev = evaluate_policy(policy, tok, held_out, reward, spec, seed=spec.seed)
    ev.stats["reward_mean"], ev.greedy["reward_mean"]

Seeds are per prompt (``derive_seed(seed, prompt.index)``), so a prompt's samples do not depend on what else
is in the batch — a resumed RAFT cycle regenerates exactly the samples an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from halo_schemas.rl import RLSpecBase
from halo_schemas.rollout import SampleParams, SampleRequest, SampleResult
from halo_training.rewards import EvalResult, RewardBatch, VerifierReward
from halo_training.rl_prompts import RLPrompt, has_chat_template

from halo_trainer_torch.core.components.rundir import RunDir


def derive_seed(seed: int, index: int) -> int:
    from halo_sampling.backends.base import derive_seed as _derive

    return _derive(seed, index)


def rollout_backend(model: Any, tokenizer: Any, spec: RLSpecBase) -> Any:
    """A :class:`~halo_sampling.backends.transformers_backend.TransformersBackend` sharing ``model``."""
    from halo_sampling.backends.transformers_backend import TransformersBackend

    return TransformersBackend.from_model(model, tokenizer, max_batch_size=spec.rollout_batch_size)


def sample_params(spec: RLSpecBase, *, n: int, seed: int, temperature: float | None = None) -> SampleParams:
    return SampleParams(n=n, temperature=spec.temperature if temperature is None else temperature, top_p=spec.top_p,
                        max_new_tokens=spec.max_new_tokens, stop=list(spec.stop), seed=seed)


def requests_for(prompts: Sequence[RLPrompt], tokenizer: Any, spec: RLSpecBase, *, n: int, seed: int,
                 temperature: float | None = None) -> list[SampleRequest]:
    """One request per prompt with its own seed (derived from ``seed`` and the prompt's index)."""
    chat = has_chat_template(tokenizer)
    out = []
    for p in prompts:
        req = p.request(chat=chat)
        params = sample_params(spec, n=n, seed=derive_seed(seed, p.index), temperature=temperature)
        out.append(req.model_copy(update={"params": params}))
    return out


def score_results(reward: VerifierReward, prompts: Sequence[RLPrompt], results: Sequence[SampleResult]) -> RewardBatch:
    """Verify every completion of ``results`` (prompt i's completions use prompt i's context)."""
    texts, contexts = [], []
    for p, r in zip(prompts, results, strict=True):
        for c in r.completions:
            texts.append(c.text)
            contexts.append(p.context)
    return reward.score(texts, contexts)


def evaluate_policy(model: Any, tokenizer: Any, prompts: Sequence[RLPrompt], reward: VerifierReward,
                    spec: RLSpecBase, *, seed: int) -> EvalResult:
    """Mean verifier reward of ``model`` on ``prompts``: ``eval_num_generations`` samples per prompt at the
    training temperature (fixed seed), and one greedy answer per prompt."""
    ps = list(prompts[: spec.eval_max_prompts])
    if not ps:
        return EvalResult(0, 0)
    backend = rollout_backend(model, tokenizer, spec)
    sampled = backend.generate(requests_for(ps, tokenizer, spec, n=spec.eval_num_generations, seed=seed))
    batch = score_results(reward, ps, sampled)
    greedy = backend.generate(requests_for(ps, tokenizer, spec, n=1, seed=seed, temperature=0.0))
    gbatch = score_results(reward, ps, greedy)
    return EvalResult(len(ps), len(batch), batch.stats(), gbatch.stats())


def sample_rows(prompts: Sequence[str], texts: Sequence[str], batch: RewardBatch, limit: int,
                **extra: Any) -> list[dict[str, Any]]:
    """Up to ``limit`` completions spread evenly over the batch, as samples.jsonl rows."""
    n = len(texts)
    if limit <= 0 or n == 0:
        return []
    picks = sorted({round(i * (n - 1) / max(1, limit - 1)) for i in range(min(limit, n))}) if limit > 1 else [0]
    rows = []
    for i in picks:
        rows.append({
            **extra, "prompt": prompts[i], "completion": texts[i], "reward": batch.total[i],
            "rewards": {label: batch.reward(label)[i] for label in batch.labels}, "success": batch.success[i],
            "error": batch.errors[i],
        })
    return rows


class SamplesLog:
    """``samples.jsonl``: completions and rewards for the dashboard (append-only, rewound on resume)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        with self.path.open("a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True, default=float) + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a torn last line of a killed attempt
            if isinstance(row, dict):
                out.append(row)
        return out

    def rewind(self, keep: Any) -> None:
        """Keep only rows for which ``keep(row)`` is true (atomically)."""
        rows = [r for r in self.read() if keep(r)]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with tmp.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def eval_summary(before: EvalResult, after: EvalResult | None, on: str) -> dict[str, Any]:
    """Before/after numbers of the held-out evaluation for the run summary."""
    out: dict[str, Any] = {"eval_on": on, "eval_prompts": before.prompts, "eval_samples": before.samples}
    out.update(before.summary("eval_before_"))
    if after is not None:
        out.update(after.summary("eval_after_"))
    b, a = before.stats.get("reward_mean"), after.stats.get("reward_mean") if after else None
    out["eval_reward_before"] = b
    out["eval_reward_after"] = a
    if a is not None and b is not None:
        out["eval_reward_gain"] = a - b
    return out


def load_eval_before(run: RunDir) -> EvalResult | None:
    cached = run.read_json("rl_eval_before.json")
    if isinstance(cached, dict) and "stats" in cached:
        return EvalResult(int(cached["prompts"]), int(cached["samples"]), dict(cached["stats"]), dict(cached["greedy"]))
    return None


def save_eval_before(run: RunDir, ev: EvalResult, main_process: bool = True) -> None:
    if main_process:
        run.write_json("rl_eval_before.json", {"prompts": ev.prompts, "samples": ev.samples, "stats": ev.stats,
                                                   "greedy": ev.greedy})
