"""GRPO on MLX: group-relative advantages, the clipped ratio objective, optional KL to the starting weights, with
rewards from the job's verifiers and rollouts sampled by MLX from the weights being trained.

Each optimizer step (``batch_size x grad_accum`` completions = ``prompts x num_generations``):

1. **rollout** — :class:`halo_sampling.backends.mlx_backend.MLXBackend` wraps the policy module in memory (no copy);
   its ``weights_version`` is bumped once per new generation batch, so every batch records the weights that
   produced it. Seeds derive from ``(seed, generation index, prompt)``: a resumed run samples as it would have;
2. **reward** — :class:`halo_training.rewards.VerifierReward` (verifier-sandbox over the bus, or the
   library in-process with ``verifier_transport: local``); graduated credit is kept, a completion no verifier
   could check gets no advantage;
3. **advantages** — ``(r - group mean) / (group std + 1e-4)`` (``scale_rewards: group``), the batch std
   (``batch``) or none (``none``: Dr. GRPO), as TRL computes them;
4. **loss** — per token ``-min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * KL`` with TRL's
   k3 KL estimator and its aggregations (``grpo`` per-sequence mean, ``dapo`` tokens of the step, ``dr_grpo``
   ``max_new_tokens`` per sequence, ``bnpo`` tokens of the micro-batch); ``importance_sampling_level: sequence``
   is GSPO. Log-probs use logits divided by the sampling temperature (as TRL). The same batch serves
   ``num_iterations`` optimizer steps (old log-probs are taken at generation time).

The training loop (accumulation, clipping, schedule, checkpoints, cancel/preempt) is
:func:`halo_trainer_mlx.core.loop.train_loop`. The mean verifier reward on held-out prompts (``data.eval``; the
training prompts without one) is measured before and after training, sampled and greedy, and written to the
summary (``eval_reward_before`` / ``eval_reward_after``).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
from halo_schemas.rl import GRPOSpec
from halo_schemas.rollout import SampleParams, SampleResult
from halo_schemas.training import RenderedSample
from halo_training.data import TrainingData
from halo_training.rewards import RewardBatch, VerifierReward, make_transport
from halo_training.rl_prompts import RLPrompt, has_chat_template, render_prompts, rl_prompts
from halo_training.runs import RecipeResult

from halo_trainer_mlx.core.batching import epoch_order
from halo_trainer_mlx.core.context import JobContext
from halo_trainer_mlx.core.export import export_model
from halo_trainer_mlx.core.loop import Batch, train_loop
from halo_trainer_mlx.core.model import apply_finetune, load_model, load_tokenizer

ADV_EPS = 1e-4  # TRL's std epsilon


def derive_seed(seed: int, index: int) -> int:
    from halo_sampling.backends.base import derive_seed as _derive

    return _derive(seed, index)


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def preview(spec: GRPOSpec, tokenizer: Any, data: TrainingData, num_samples: int) -> list[RenderedSample]:
    """Prompts as the rollout renders them (a prompt is never trained: only sampled completions are)."""
    return render_prompts(spec, tokenizer, data, num_samples, encode_chat=_chat_ids)


# ---- advantages and loss -------------------------------------------------------------------------
def group_advantages(rewards: np.ndarray, scale: str) -> np.ndarray:
    """Advantages of an (n_prompts, G) reward array; NaN (no verifier could check) -> advantage 0 and left out of
    its group's statistics."""
    r = np.asarray(rewards, dtype=np.float64)
    valid = ~np.isnan(r)
    counts = valid.sum(axis=1, keepdims=True)
    mean = np.where(counts > 0, np.nansum(r, axis=1, keepdims=True) / np.maximum(counts, 1), 0.0)
    centred = np.where(valid, r - mean, 0.0)
    if scale == "group":
        var = (centred**2).sum(axis=1, keepdims=True) / np.maximum(counts - 1, 1)
        adv = centred / (np.sqrt(var) + ADV_EPS)
    elif scale == "batch":
        xs = r[valid]
        std = float(np.std(xs, ddof=1)) if xs.size > 1 else 0.0
        adv = centred / (std + ADV_EPS)
    else:
        adv = centred
    return np.where(valid, adv, 0.0).astype(np.float32)


def token_logps(model: Any, ids: Any, temperature: float) -> Any:
    """(B, L-1) log p(ids[:, t+1] | ids[:, :t+1]) with logits divided by ``temperature``."""
    import mlx.core as mx

    logits = model(ids)[:, :-1].astype(mx.float32) / temperature
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return mx.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]


def grpo_token_loss(logp: Any, old: Any, ref: Any | None, adv: Any, mask: Any, spec: GRPOSpec) -> tuple[Any, dict[str, Any]]:
    """Per-token loss (B, L-1) and per-token clip/KL indicators, as TRL's GRPO objective."""
    import mlx.core as mx

    log_ratio = logp - old
    if spec.importance_sampling_level == "sequence":  # GSPO: one ratio per sequence (length-normalised)
        log_ratio = ((log_ratio * mask).sum(axis=1, keepdims=True) / mx.maximum(mask.sum(axis=1, keepdims=True), 1.0))
        log_ratio = mx.broadcast_to(log_ratio, logp.shape)
    ratio = mx.exp(log_ratio)
    low, high = 1.0 - spec.epsilon, 1.0 + (spec.epsilon_high if spec.epsilon_high is not None else spec.epsilon)
    a = adv[:, None]
    unclipped = mx.minimum(ratio, spec.delta) if spec.delta is not None else ratio
    per_token = -mx.minimum(unclipped * a, mx.clip(ratio, low, high) * a)
    stats: dict[str, Any] = {
        "clip_ratio_low": mx.stop_gradient(((ratio < low) & (a < 0)).astype(mx.float32)),
        "clip_ratio_high": mx.stop_gradient(((ratio > high) & (a > 0)).astype(mx.float32)),
    }
    if ref is not None and spec.beta > 0:
        kl = mx.exp(ref - logp) - (ref - logp) - 1.0  # k3 estimator
        per_token = per_token + spec.beta * kl
        stats["kl"] = mx.stop_gradient(kl)
    return per_token, stats


# ---- the task --------------------------------------------------------------------------------------
class GRPOTask:
    """On-policy batches for :func:`train_loop`: generate, score and build one step's micro-batches."""

    def __init__(self, ctx: JobContext, prompts: list[RLPrompt], tok: Any, reward: VerifierReward,
                 ref_model: Any | None) -> None:
        self.ctx, self.spec = ctx, ctx.spec  # type: ignore[assignment]
        self.spec: GRPOSpec
        self.prompts, self.tok, self.reward, self.ref_model = prompts, tok, reward, ref_model
        self.chat = has_chat_template(tok)
        self.per_step = self.spec.batch_size * self.spec.grad_accum // self.spec.num_generations
        self.backend: Any = None
        self._buffer: list[Batch] = []
        self._buffer_gen = -1
        self._metrics: dict[str, float] = {}
        self.samples_path = ctx.run.root / "samples.jsonl"

    def micro_batches_per_epoch(self) -> int:
        gens = math.ceil(len(self.prompts) / self.per_step)
        return gens * self.spec.num_iterations * self.spec.grad_accum

    def epoch_batches(self, epoch: int) -> list[Batch]:
        return []

    def eval_batches(self) -> list[Batch]:
        return []  # held-out reward is measured before and after training instead of a loss

    def step_metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def _prompts_of(self, gen: int) -> list[RLPrompt]:
        n, out = len(self.prompts), []
        for k in range(gen * self.per_step, (gen + 1) * self.per_step):
            epoch, within = divmod(k, n)
            out.append(self.prompts[epoch_order(n, self.spec.seed, epoch)[within]])
        return out

    def step_batches(self, step: int, model: Any) -> list[Batch]:
        gen = step // self.spec.num_iterations
        if gen != self._buffer_gen:
            self._buffer, self._buffer_gen = self._generate(gen, step, model), gen
        return self._buffer

    def _generate(self, gen: int, step: int, model: Any) -> list[Batch]:
        import mlx.core as mx

        spec, G = self.spec, self.spec.num_generations
        t0 = time.monotonic()
        model.eval()  # no dropout while sampling and scoring the old policy
        if self.backend is None:
            self.backend = rollout_backend(model, self.tok, spec)
        else:
            self.backend.update_weights()  # the optimizer changed the shared module in place: a new version
        prompts = self._prompts_of(gen)
        base = derive_seed(spec.seed, gen)
        reqs = [p.request(chat=self.chat).model_copy(update={"params": sample_params(spec, n=G,
                                                                                     seed=derive_seed(base, j))})
                for j, p in enumerate(prompts)]
        results: list[SampleResult] = self.backend.generate(reqs)
        gen_s = time.monotonic() - t0
        texts = [c.text for r in results for c in r.completions]
        contexts = [p.context for p, r in zip(prompts, results, strict=True) for _ in r.completions]
        scored = self.reward.score(texts, contexts)
        totals = np.array([np.nan if t is None else t for t in scored.total], dtype=np.float64).reshape(len(prompts), G)
        adv = group_advantages(totals, spec.scale_rewards).reshape(-1)
        seqs: list[tuple[list[int], list[int], bool]] = []
        for r in results:
            for c in r.completions:
                seqs.append((list(r.prompt_token_ids), list(c.token_ids), c.finish_reason == "length"))
        batches = self._micro_batches(seqs, adv, model)
        model.train()
        lengths = [len(c) for _, c, _ in seqs]
        stds = np.nanstd(totals, axis=1, ddof=0)
        self._metrics = {
            **scored.stats(), "completion_length": float(np.mean(lengths)),
            "completion_length_max": float(max(lengths)), "completion_length_min": float(min(lengths)),
            "truncated_ratio": float(np.mean([t for _, _, t in seqs])),
            "zero_std_ratio": float(np.mean(np.nan_to_num(stds, nan=0.0) < 1e-8)),
            "weights_version": float(self.backend.weights_version), "generate_seconds": gen_s,
            "verify_seconds": scored.seconds,
        }
        self._log_samples(step, prompts, texts, scored)
        mx.eval([v for b in batches for v in b.arrays.values() if isinstance(v, mx.array)])
        return batches

    def _micro_batches(self, seqs: list[tuple[list[int], list[int], bool]], adv: np.ndarray, model: Any) -> list[Batch]:
        import mlx.core as mx

        spec, bs = self.spec, self.spec.batch_size
        pad = self.tok.pad_token_id
        step_tokens = sum(0 if (t and spec.mask_truncated_completions) else len(c) for _, c, t in seqs)
        n_seqs = len(seqs)
        # Loss items per micro-batch: the loop divides the step's summed loss by the sum of items.
        step_items = {"dapo": step_tokens, "grpo": n_seqs, "dr_grpo": n_seqs * spec.max_new_tokens,
                      "bnpo": spec.grad_accum}[spec.loss_type]
        out = []
        for k in range(0, n_seqs, bs):
            chunk = seqs[k:k + bs]
            width = max(len(p) + len(c) for p, c, _ in chunk)
            ids = np.full((len(chunk), width), pad, dtype=np.int32)
            mask = np.zeros((len(chunk), width - 1), dtype=np.float32)
            for i, (p, c, trunc) in enumerate(chunk):
                ids[i, :len(p) + len(c)] = p + c
                if not (trunc and spec.mask_truncated_completions):
                    mask[i, len(p) - 1:len(p) + len(c) - 1] = 1.0  # positions predicting completion tokens
            arrays: dict[str, Any] = {"ids": mx.array(ids), "mask": mx.array(mask),
                                      "adv": mx.array(adv[k:k + len(chunk)]),
                                      "stat_scale": step_items / max(1, step_tokens)}
            if spec.num_iterations > 1:  # the policy that sampled: fixed across the batch's iterations
                arrays["old"] = mx.stop_gradient(token_logps(model, arrays["ids"], spec.temperature))
            if self.ref_model is not None:
                arrays["ref"] = mx.stop_gradient(token_logps(self.ref_model, arrays["ids"], spec.temperature))
            tokens = int(sum(len(p) + len(c) for p, c, _ in chunk))
            mb_tokens = float(mask.sum())
            items = {"dapo": mb_tokens, "grpo": len(chunk), "dr_grpo": len(chunk) * spec.max_new_tokens,
                     "bnpo": 1}[spec.loss_type]
            arrays["mb_tokens"] = mb_tokens
            out.append(Batch(arrays=arrays, tokens=tokens, items=int(items)))
        return out

    def loss(self, model: Any, batch: Batch) -> tuple[Any, dict[str, Any]]:
        import mlx.core as mx

        a, spec = batch.arrays, self.spec
        logp = token_logps(model, a["ids"], spec.temperature)
        old = a.get("old", mx.stop_gradient(logp))
        per_token, tok_stats = grpo_token_loss(logp, old, a.get("ref"), a["adv"], a["mask"], spec)
        mask = a["mask"]
        masked = per_token * mask
        if spec.loss_type == "grpo":
            loss = (masked.sum(axis=1) / mx.maximum(mask.sum(axis=1), 1.0)).sum()
        elif spec.loss_type == "bnpo":
            loss = masked.sum() / max(1.0, a["mb_tokens"])
        else:  # dapo, dr_grpo: token sums, normalised by the loop's item count
            loss = masked.sum()
        scale = a["stat_scale"]  # so that the loop's division by the step's items gives a mean over tokens
        stats = {k: (v * mask).sum() * scale for k, v in tok_stats.items()}
        stats["clip_ratio"] = stats["clip_ratio_low"] + stats["clip_ratio_high"]
        return loss, stats

    def _log_samples(self, step: int, prompts: list[RLPrompt], texts: list[str], scored: RewardBatch) -> None:
        limit, n = self.spec.log_samples, len(texts)
        if limit <= 0 or n == 0:
            return
        G = self.spec.num_generations
        picks = sorted({round(i * (n - 1) / max(1, limit - 1)) for i in range(min(limit, n))}) if limit > 1 else [0]
        per_verifier = {lab: scored.reward(lab) for lab in scored.labels}
        with self.samples_path.open("a", encoding="utf-8") as f:
            for i in picks:
                row = {"step": step + 1, "policy_step": step, "weights_version": self.backend.weights_version,
                       "prompt": prompts[i // G].text, "completion": texts[i], "reward": scored.total[i],
                       "rewards": {lab: rs[i] for lab, rs in per_verifier.items()},
                       "success": scored.success[i], "error": scored.errors[i]}
                f.write(json.dumps(row, sort_keys=True) + "\n")


def rewind_samples(path: Any, last_step: int | None) -> None:
    """Drop samples.jsonl rows after the checkpoint a run resumes from (all of them for a fresh run)."""
    if last_step is None or not path.exists():
        path.unlink(missing_ok=True)
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed attempt
        if int(row.get("step", 0)) <= last_step:
            keep.append(line)
    path.write_text("".join(x + "\n" for x in keep), encoding="utf-8")


# ---- rollouts and evaluation -------------------------------------------------------------------------
def rollout_backend(model: Any, tok: Any, spec: GRPOSpec) -> Any:
    """The MLX rollout backend sharing ``model`` (mlx-lm's batched generator over the live weights)."""
    from halo_sampling.backends.mlx_backend import MLXBackend
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    return MLXBackend.from_model(model, TokenizerWrapper(tok), max_batch_size=spec.rollout_batch_size)


def sample_params(spec: GRPOSpec, *, n: int, seed: int, temperature: float | None = None) -> SampleParams:
    return SampleParams(n=n, temperature=spec.temperature if temperature is None else temperature, top_p=spec.top_p,
                        max_new_tokens=spec.max_new_tokens, stop=list(spec.stop), seed=seed)


def evaluate(model: Any, tok: Any, prompts: list[RLPrompt], reward: VerifierReward, spec: GRPOSpec) -> dict[str, Any]:
    """Mean verifier reward on ``prompts``: ``eval_num_generations`` samples at the training temperature (fixed
    seed) and one greedy answer per prompt."""
    ps = prompts[: spec.eval_max_prompts]
    model.eval()
    backend = rollout_backend(model, tok, spec)
    chat = has_chat_template(tok)

    def run(n: int, temperature: float | None) -> dict[str, float]:
        reqs = [p.request(chat=chat).model_copy(update={"params": sample_params(
            spec, n=n, seed=derive_seed(spec.seed, i), temperature=temperature)}) for i, p in enumerate(ps)]
        results = backend.generate(reqs)
        texts = [c.text for r in results for c in r.completions]
        ctxs = [p.context for p, r in zip(ps, results, strict=True) for _ in r.completions]
        stats = reward.score(texts, ctxs).stats()
        stats.pop("verify_seconds", None)  # timing, not a score: kept out of rl_eval_*.json and the summary
        return stats

    sampled, greedy = run(spec.eval_num_generations, None), run(1, 0.0)
    model.train()
    return {"prompts": len(ps), "samples": len(ps) * spec.eval_num_generations, "stats": sampled, "greedy": greedy}


def _eval_extras(prefix: str, ev: dict[str, Any]) -> dict[str, Any]:
    out = {f"{prefix}{k}": v for k, v in ev["stats"].items()}
    out.update({f"{prefix}greedy_{k}": v for k, v in ev["greedy"].items() if k in ("reward_mean", "pass_rate")})
    return out


def train(ctx: JobContext) -> RecipeResult:
    import mlx.core as mx

    spec: GRPOSpec = ctx.spec  # type: ignore[assignment]
    prompts, held_out = rl_prompts(ctx.data, spec.data.text_field)
    reward = VerifierReward(spec.verifiers, make_transport(spec.verifier_transport, client_name="trainer-mlx-rl"),
                            use_cache=spec.verifier_cache, timeout_s=spec.verifier_timeout_s)
    try:
        reward.check()  # a typo in a verifier fails the job before a model is loaded
        tok = load_tokenizer(ctx.resolved.model_path)
        mx.random.seed(spec.seed)
        model = load_model(ctx.resolved.model_path, ctx.resolved.dtype)
        eval_prompts, eval_on = (held_out, "eval") if held_out else (prompts, "train")
        ev_before = ctx.run.read_json("rl_eval_before.json")
        if not isinstance(ev_before, dict) or "stats" not in ev_before:
            ev_before = evaluate(model, tok, eval_prompts, reward, spec)
            ctx.run.write_json("rl_eval_before.json", ev_before)
        ref_model = None
        if spec.beta > 0:  # the starting weights, frozen (for an adapter: the base without it)
            ref_model = load_model(ctx.resolved.model_path, ctx.resolved.dtype)
            ref_model.freeze()
            ref_model.eval()
        adapter_config = apply_finetune(model, spec)
        model.train()
        task = GRPOTask(ctx, prompts, tok, reward, ref_model)
        rewind_samples(task.samples_path,
                       int(ctx.resume_from.name.split("-")[1]) if ctx.resume_from is not None else None)
        result = train_loop(ctx, model, task)
        rows = [r for r in ctx.run.read_metrics() if "loss" in r]
        rewards = [r["reward_mean"] for r in rows if "reward_mean" in r]
        result.extras.update({
            "verifiers": [{"label": lab, "name": ref.name, "weight": ref.weight}
                          for lab, ref in zip(reward.labels, reward.refs, strict=True)],
            "loss_type": spec.loss_type, "beta": spec.beta, "num_generations": spec.num_generations,
            "scale_rewards": spec.scale_rewards, "generation": "mlx", "verifier_transport": spec.verifier_transport,
            "verifier_calls": reward.calls, "verifier_seconds": round(reward.seconds, 3),
            "train_reward_first": rewards[0] if rewards else None, "train_reward_last": rewards[-1] if rewards else None,
            "eval_on": eval_on, "eval_prompts": ev_before["prompts"], "eval_samples": ev_before["samples"],
            **_eval_extras("eval_before_", ev_before),
            "eval_reward_before": ev_before["stats"].get("reward_mean"),
        })
        if result.state != "succeeded":
            return result
        ev_after = evaluate(model, tok, eval_prompts, reward, spec)
        after = ev_after["stats"].get("reward_mean")
        result.extras.update({**_eval_extras("eval_after_", ev_after), "eval_reward_after": after})
        if after is not None and result.extras["eval_reward_before"] is not None:
            result.extras["eval_reward_gain"] = after - result.extras["eval_reward_before"]
        model.eval()
        result.outputs = export_model(ctx, model, adapter_config)
        return result
    finally:
        reward.close()
