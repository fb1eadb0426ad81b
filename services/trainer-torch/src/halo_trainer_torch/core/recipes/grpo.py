"""GRPO recipe: Group Relative Policy Optimization with verifier-grounded rewards.

Built on TRL's ``GRPOTrainer`` (its advantages, clipped objective, KL penalty and loss variants — tested
against hand-computed numbers in tests/test_grpo.py) with three things plugged in:

* **rewards** — one TRL reward function computing the weighted mean of the job's verifiers
  (:class:`halo_training.rewards.VerifierReward`), batched to verifier-sandbox over the bus (or the
  library in-process); graduated rewards stay partial credit;
* **generation** — Halo's rollout backend wrapping the policy module in memory
  (``TransformersBackend.from_model``): each prompt prefilled once for its ``num_generations`` samples,
  per-sample seeds; ``update_weights()`` after every optimizer step, so each batch records the
  ``weights_version`` that produced it (``generation: trl`` uses TRL's ``model.generate`` instead);
* **hooks** — the shared Halo callback (metrics.jsonl, rate-limited progress events with numbers only,
  atomic checkpoints, cancel, resume) plus ``samples.jsonl``: a few completions with their rewards per
  logged step, for the dashboard.

Before training and after it, the mean verifier reward on the held-out prompts (``data.eval`` /
``data.eval_fraction``; the training prompts when there are none) is measured the same way — sampled at
the training temperature with a fixed seed, and greedy — and written to the summary
(``eval_reward_before`` / ``eval_reward_after``).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import defaultdict
from typing import Any

from halo_schemas.rl import GRPOSpec
from halo_schemas.training import RenderedSample
from halo_training.rewards import EvalResult, RewardBatch, VerifierReward, make_transport
from halo_training.rl_prompts import (
    RLPrompt,
    has_chat_template,
    register_rl_formats,
    render_prompts,
    rl_prompts,
)

from halo_trainer_torch.core.components.data import TrainingData
from halo_trainer_torch.core.components.hooks import HaloTrainerMixin
from halo_trainer_torch.core.components.model import load_base_model, load_tokenizer, lora_config
from halo_trainer_torch.core.components.rl_rollout import (
    SamplesLog,
    derive_seed,
    eval_summary,
    evaluate_policy,
    load_eval_before,
    rollout_backend,
    sample_rows,
    save_eval_before,
)
from halo_trainer_torch.core.components.session import (
    JobContext,
    RecipeResult,
    is_main_process,
    make_callback,
    samples_before,
    train_and_export,
    training_kwargs,
)

METHOD = "grpo"
TASK = "causal"
register_rl_formats("grpo", "raft")

log = logging.getLogger("halo_trainer_torch.grpo")

#: TRL metric names -> ours (docs/metrics.md); None drops the metric.
METRIC_NAMES: dict[str, str | None] = {
    "reward": "reward_mean",
    "completions/mean_length": "completion_length",
    "completions/max_length": "completion_length_max",
    "completions/min_length": "completion_length_min",
    "completions/clipped_ratio": "truncated_ratio",
    "completions/mean_terminated_length": None,
    "completions/min_terminated_length": None,
    "completions/max_terminated_length": None,
    "frac_reward_zero_std": "zero_std_ratio",
    "clip_ratio/region_mean": "clip_ratio",
    "clip_ratio/low_mean": "clip_ratio_low",
    "clip_ratio/high_mean": "clip_ratio_high",
    "clip_ratio/low_min": None,
    "clip_ratio/high_max": None,
    "cispo_clip_ratio": "clip_ratio",
    "step_time": "step_seconds",
    "rewards/verifiers/mean": None,  # the same number as reward_mean
    "rewards/verifiers/std": None,
}


def rename_metrics(metrics: dict[str, list[float]]) -> defaultdict[str, list[float]]:
    """TRL's accumulated metrics under our names (``a/b`` becomes ``a_b`` for anything not listed)."""
    out: defaultdict[str, list[float]] = defaultdict(list)
    for key, values in metrics.items():
        new = METRIC_NAMES.get(key, key.replace("/", "_"))
        if new is not None:
            out[new].extend(values)
    return out


def preview(spec: GRPOSpec, tokenizer: Any, data: TrainingData, num_samples: int) -> list[RenderedSample]:
    """Prompts as the rollout renders them (nothing of a prompt is trained: only sampled completions are)."""
    return render_prompts(spec, tokenizer, data, num_samples)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) for m in prompt if m.get("role") == "user")
    return str(prompt)


def cut_at_stop(text: str, stops: list[str]) -> str:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(hits)] if hits else text


class RolloutFunc:
    """TRL ``rollout_func``: the prompts of a generation batch (each repeated ``num_generations`` times, in
    runs) sampled by Halo's rollout backend, which wraps the policy module itself (no copy, so no staleness);
    the backend's ``weights_version`` is bumped once per optimizer step and reported with every batch."""

    def __init__(self, spec: GRPOSpec, tokenizer: Any) -> None:
        self.spec, self.tokenizer = spec, tokenizer
        self.backend: Any = None
        self.synced_step = 0

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        from halo_schemas.rollout import ChatTurn, SampleRequest

        from halo_trainer_torch.core.components.rl_rollout import sample_params

        t0 = time.monotonic()
        model = trainer.accelerator.unwrap_model(trainer.model)
        step = int(trainer.state.global_step)
        if self.backend is None or self.backend.model is not model:
            self.backend = rollout_backend(model, self.tokenizer, self.spec)
            self.synced_step = step
        elif step != self.synced_step:
            # The optimizer changed the shared module in place: a new version of the weights.
            self.backend.update_weights()
            self.synced_step = step
        groups: list[list[Any]] = []  # [prompt, count]
        for p in prompts:
            if groups and groups[-1][0] == p:
                groups[-1][1] += 1
            else:
                groups.append([p, 1])
        base = derive_seed(self.spec.seed, step)
        reqs = []
        for j, (p, n) in enumerate(groups):
            params = sample_params(self.spec, n=n, seed=derive_seed(base, j))
            if isinstance(p, list):
                reqs.append(SampleRequest(messages=[ChatTurn(role=m["role"], content=m["content"]) for m in p],
                                          params=params))
            else:
                reqs.append(SampleRequest(prompt=str(p), params=params))
        results = self.backend.generate(reqs)
        prompt_ids, completion_ids, texts = [], [], []
        for r in results:
            for c in r.completions:
                prompt_ids.append(list(r.prompt_token_ids))
                completion_ids.append(list(c.token_ids))
                texts.append(c.text)
        version = self.backend.weights_version
        mode = "train" if trainer.model.training else "eval"
        trainer._metrics[mode]["generate_seconds"].append(time.monotonic() - t0)
        trainer._metrics[mode]["weights_version"].append(float(version))
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None,
                "halo_text": texts, "halo_weights_version": [version] * len(texts)}


def _trainer_cls() -> type:
    """``HaloTrainerMixin`` + TRL's ``GRPOTrainer`` (built lazily: importing TRL costs seconds)."""
    from transformers import Trainer
    from trl import GRPOTrainer

    class HaloGRPOTrainer(HaloTrainerMixin, GRPOTrainer):  # type: ignore[misc, valid-type]
        halo_spec: GRPOSpec
        halo_reward: VerifierReward
        halo_eval_prompts: list[RLPrompt]
        halo_samples: SamplesLog | None = None
        halo_pending: list[dict[str, Any]]
        halo_last_eval: EvalResult | None = None

        @property
        def halo_training(self) -> bool:
            return bool(getattr(self.model, "training", False))

        def _prepare_inputs(self, inputs: Any) -> dict[str, Any]:  # type: ignore[override]
            # GRPO's input is a generation batch (a list of rows), not a collated dict: generate, score, buffer;
            # then count the prompt + completion tokens this micro-batch trains on.
            out = GRPOTrainer._prepare_inputs(self, inputs)
            if self.halo_training:
                self.halo_tokens_local += int(out["prompt_mask"].sum()) + int(out["completion_mask"].sum())
            return out

        def halo_on_batch(self, batch: RewardBatch, kwargs: dict[str, Any], prompts: list[Any], texts: list[str]) -> None:
            mode = "train" if self.halo_training else "eval"
            for k, v in batch.stats().items():
                if k not in ("reward_mean", "reward_std"):  # TRL logs those from the returned totals
                    self._metrics[mode][k].append(v)
            versions = kwargs.get("halo_weights_version") or []
            if mode == "train" and self.halo_spec.log_samples:
                rows = sample_rows([_prompt_text(p) for p in prompts], texts, batch, self.halo_spec.log_samples)
                for r in rows:
                    r["weights_version"] = versions[0] if versions else None
                    r["policy_step"] = int(self.state.global_step)
                self.halo_pending = rows

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            mode = "train" if self.halo_training else "eval"
            self._metrics[mode] = rename_metrics(self._metrics[mode])
            pending = getattr(self, "halo_pending", None)
            if mode == "train" and pending and self.halo_samples is not None and is_main_process():
                self.halo_samples.append([{"step": int(self.state.global_step), **r} for r in pending])
                self.halo_pending = []
            super().log(logs, start_time)

        def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                     metric_key_prefix: str = "eval") -> dict[str, float]:
            """Held-out verifier reward (sampled and greedy), instead of TRL's loss on generated eval batches.
            Evaluated once per step: the final evaluation after a periodic one at the last step reuses it."""
            step = int(self.state.global_step)
            if self.halo_last_eval is not None and getattr(self, "halo_eval_step", None) == step:
                return {f"{metric_key_prefix}_{k}": v for k, v in self.halo_last_eval.summary("").items()}
            model = self.accelerator.unwrap_model(self.model)
            ev = evaluate_policy(model, self.processing_class, self.halo_eval_prompts, self.halo_reward,
                                 self.halo_spec, seed=self.halo_spec.seed)
            self.halo_last_eval, self.halo_eval_step = ev, step
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in ev.summary("").items()}
            # Trainer.log directly: GRPO's log would fold the pending *training* metrics into this eval row.
            Trainer.log(self, dict(metrics))
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return HaloGRPOTrainer


def grpo_config_kwargs(ctx: JobContext) -> dict[str, Any]:
    """TrainingArguments shared by every recipe + GRPO's own (TRL ``GRPOConfig`` fields)."""
    spec: GRPOSpec = ctx.spec  # type: ignore[assignment]
    kw = training_kwargs(ctx)
    kw.update(
        per_device_eval_batch_size=spec.num_generations,
        num_generations=spec.num_generations,
        max_completion_length=spec.max_new_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        beta=spec.beta,
        epsilon=spec.epsilon,
        epsilon_high=spec.epsilon_high,
        delta=spec.delta,
        scale_rewards=spec.scale_rewards,
        loss_type=spec.loss_type,
        num_iterations=spec.num_iterations,
        importance_sampling_level=spec.importance_sampling_level,
        mask_truncated_completions=spec.mask_truncated_completions,
        # Importance ratios compare two forward passes of the policy: dropout would make them noise.
        disable_dropout=True,
        shuffle_dataset=True,
        log_completions=False,
        remove_unused_columns=False,
    )
    return kw


def _dataset(prompts: list[RLPrompt], chat: bool) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p.chat_messages() if chat else p.text, "halo_index": p.index} for p in prompts])


def train(ctx: JobContext) -> RecipeResult:
    from trl import GRPOConfig

    spec: GRPOSpec = ctx.spec  # type: ignore[assignment]
    prompts, held_out = rl_prompts(ctx.data, spec.data.text_field)
    tok = load_tokenizer(ctx.resolved.model_path, spec.trust_remote_code)
    chat = has_chat_template(tok)
    reward = VerifierReward(spec.verifiers, make_transport(spec.verifier_transport, client_name="trainer-torch-rl"), use_cache=spec.verifier_cache,
                            timeout_s=spec.verifier_timeout_s)
    try:
        reward.check()
        model = load_base_model(spec, ctx.resolved, TASK)
        before = samples_before(ctx, model, tok)
        eval_prompts, eval_on = (held_out, "eval") if held_out else (prompts, "train")
        ev_before = load_eval_before(ctx.run)
        if ev_before is None:
            ev_before = evaluate_policy(model, tok, eval_prompts, reward, spec, seed=spec.seed)
            save_eval_before(ctx.run, ev_before, is_main_process())

        peft_config = None
        if spec.finetune != "full":
            if spec.finetune == "qlora":
                from peft import prepare_model_for_kbit_training

                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ctx.resolved.gradient_checkpointing)
            # A fresh adapter handed to TRL: the reference model (beta > 0) is the base with the adapter disabled.
            peft_config = lora_config(spec, TASK)

        samples = SamplesLog(ctx.run.root / "samples.jsonl")
        if is_main_process():
            if ctx.resume_from is not None:
                resumed_at = int(ctx.resume_from.name.split("-")[1])
                samples.rewind(lambda r: int(r.get("step", 0)) <= resumed_at)
            else:
                samples.path.unlink(missing_ok=True)

        by_index = {p.index: p for p in prompts}

        def contexts_of(kwargs: dict[str, Any]) -> list[Any]:
            return [by_index[int(i)].context for i in kwargs["halo_index"]]

        def texts_of(completions: list[Any], kwargs: dict[str, Any]) -> list[str]:
            texts = kwargs.get("halo_text")
            if texts is None:  # TRL's own generate path: decoded completions, cut at our stop strings
                texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
                if spec.stop:
                    texts = [cut_at_stop(t, spec.stop) for t in texts]
            return list(texts)

        holder: dict[str, Any] = {}

        def on_batch(batch: RewardBatch, kwargs: dict[str, Any]) -> None:
            trainer = holder.get("trainer")
            if trainer is not None:
                trainer.halo_on_batch(batch, kwargs, holder["prompts"], texts_of(holder["completions"], kwargs))

        reward_func = reward.trl_reward_func(contexts_of, texts_of, on_batch)

        def scored(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
            holder["prompts"], holder["completions"] = prompts, completions
            return reward_func(prompts, completions, **kwargs)

        scored.__name__ = "verifiers"
        callback = make_callback(ctx)
        args = GRPOConfig(**grpo_config_kwargs(ctx))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*rollout_func.*experimental.*")
            trainer = _trainer_cls()(
                model=model, reward_funcs=[scored], args=args, train_dataset=_dataset(prompts, chat),
                eval_dataset=_dataset(held_out, chat) if ctx.has_eval and held_out else None, processing_class=tok,
                callbacks=[callback], peft_config=peft_config,
                rollout_func=RolloutFunc(spec, tok) if spec.generation == "rollout" else None,
            )
        holder["trainer"] = trainer
        trainer.halo_spec, trainer.halo_reward, trainer.halo_eval_prompts = spec, reward, eval_prompts
        trainer.halo_samples = samples
        trainer.halo_pending = []

        def extras(t: Any, _eval: dict[str, float]) -> dict[str, Any]:
            after = t.halo_last_eval
            if after is None or t.state.global_step != getattr(t, "halo_eval_step", -1):
                unwrapped = t.accelerator.unwrap_model(t.model)
                after = evaluate_policy(unwrapped, tok, eval_prompts, reward, spec, seed=spec.seed)
            out = eval_summary(ev_before, after, eval_on)
            rows = ctx.run.read_metrics()
            rewards = [r["reward_mean"] for r in rows if "reward_mean" in r and "loss" in r]
            out.update({
                "verifiers": [{"label": lab, "name": ref.name, "weight": ref.weight} for lab, ref in
                              zip(reward.labels, reward.refs, strict=True)],
                "loss_type": spec.loss_type, "beta": spec.beta, "num_generations": spec.num_generations,
                "scale_rewards": spec.scale_rewards, "generation": spec.generation,
                "verifier_transport": spec.verifier_transport, "verifier_calls": reward.calls,
                "verifier_seconds": round(reward.seconds, 3),
                "train_reward_first": rewards[0] if rewards else None,
                "train_reward_last": rewards[-1] if rewards else None,
            })
            return out

        return train_and_export(ctx, trainer, callback, trainer.model, tok, before=before, extras=extras)
    finally:
        reward.close()
