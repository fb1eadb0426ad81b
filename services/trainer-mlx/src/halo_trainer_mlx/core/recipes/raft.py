"""RAFT on MLX: rejection-sampling finetuning in cycles, resumable at the cycle and stage where it stopped — the
same stage machine, curriculum, shaping and files as trainer-torch (:mod:`halo_training.raft_cycles` over
:mod:`halo_training.raft_state`).

Each cycle ``k`` runs five stages, each persisted in ``raft_state.json`` before the next starts:

1. **generate** — the curriculum picks the cycle's prompts; :class:`halo_sampling.backends.mlx_backend.MLXBackend`
   samples ``num_generations`` completions per prompt from the current policy (per-prompt seeds), appended to
   ``cycles/<k>/samples.jsonl`` chunk by chunk;
2. **verify** — every completion is scored by the job's verifiers (:class:`halo_training.rewards.VerifierReward`):
   ``verified.jsonl``;
3. **select** — reward shaping sets the cycle's threshold and kept fraction, :func:`halo_training.raft_state.select_samples`
   keeps the training-eligible top fraction: ``selected.jsonl``, every rejection counted by reason;
4. **train** — SFT for ``epochs`` over the kept samples (completion-only loss, the same encoder as trainer-mlx's
   SFT) at learning rate ``learning_rate x lr_decay^(k-1)``; the trainable weights go to ``cycles/<k>/adapter``
   (or ``model``) as mlx-lm ``weights.safetensors`` + ``adapter_config.json``. A cycle that keeps nothing does
   not train, and says why;
5. **checkpoint** — a marker ``checkpoints/checkpoint-<step>`` and a ``checkpointed`` event.

A restarted run continues at the first unfinished stage. The held-out reward before and after (sampled and greedy,
as MLX GRPO measures it) and a row per cycle are in the summary. Not on MLX yet: ``probe`` (refused).
"""

from __future__ import annotations

import math
import shutil
import time
from typing import Any

from halo_schemas.rl import RAFTSpec
from halo_schemas.training import RenderedSample
from halo_training.data import TrainingData
from halo_training.raft_cycles import RaftCycles, Stopped
from halo_training.rl_prompts import RLPrompt, register_rl_formats
from halo_training.rundir import write_json_atomic
from halo_training.runs import RecipeResult

from halo_trainer_mlx.core.batching import make_batches, pack_bfd, unpacked
from halo_trainer_mlx.core.checkpoint import WEIGHTS, load_weights
from halo_trainer_mlx.core.context import JobContext
from halo_trainer_mlx.core.export import export_model
from halo_trainer_mlx.core.loop import _compiled_steps, _fingerprint, make_optimizer, memory_metrics
from halo_trainer_mlx.core.model import (
    apply_finetune,
    enable_gradient_checkpointing,
    enable_packing,
    load_model,
    load_tokenizer,
    parameter_counts,
)
from halo_trainer_mlx.core.recipes import grpo
from halo_trainer_mlx.core.recipes.sft import SFTTask
from halo_trainer_mlx.core.samples import before_after, samples_before
from halo_trainer_mlx.core.schedule import lr_factor, total_steps, warmup_steps

register_rl_formats("grpo", "raft")


def preview(spec: RAFTSpec, tokenizer: Any, data: TrainingData, num_samples: int) -> list[RenderedSample]:
    """Prompts as the rollout renders them (the sampled completions are what each cycle trains on)."""
    return grpo.preview(spec, tokenizer, data, num_samples)  # type: ignore[arg-type]


class Raft(RaftCycles):
    """One RAFT run on MLX: :class:`~halo_training.raft_cycles.RaftCycles` with MLX sampling and training."""

    CLIENT = "trainer-mlx-rl"

    def __init__(self, ctx: JobContext) -> None:
        super().__init__(ctx, load_tokenizer(ctx.resolved.model_path))
        self.spec: RAFTSpec = ctx.spec  # type: ignore[assignment]

    # ---- policies -------------------------------------------------------------------------------
    def load_policy(self, rel: str | None) -> tuple[Any, dict[str, Any]]:
        """The base with the spec's (seeded) adapters, and the trainable weights of an earlier cycle if ``rel``."""
        import mlx.core as mx

        mx.random.seed(self.spec.seed)  # the same initial adapter whichever attempt builds it
        model = load_model(self.ctx.resolved.model_path, self.ctx.resolved.dtype)
        config = apply_finetune(model, self.spec)
        if rel is not None:
            load_weights(self.run.root / rel, model)
        return model, config

    # ---- stages (the others are RaftCycles') ----------------------------------------------------
    def generation_policy(self, k: int) -> Any:
        policy, _ = self.load_policy(self.state.policy_before(k))
        policy.eval()
        return policy

    def rollout_backend(self, policy: Any) -> Any:
        return grpo.rollout_backend(policy, self.tok, self.spec)  # type: ignore[arg-type]

    def sample_requests(self, prompts: list[RLPrompt], seed: int) -> list[Any]:
        """One request per prompt, its seed derived from ``seed`` and the prompt's index (as trainer-torch)."""
        n = self.spec.num_generations
        return [p.request(chat=self.chat).model_copy(update={"params": grpo.sample_params(
            self.spec, n=n, seed=grpo.derive_seed(seed, p.index))}) for p in prompts]  # type: ignore[arg-type]

    def train_cycle(self, k: int) -> dict[str, Any]:
        import mlx.core as mx
        import mlx.nn as nn

        spec = self.spec
        skipped = self.untrained(k)
        if skipped is not None:
            return skipped
        encoded = self.sft_rows(k, spec.max_length)
        ordered = self.ordered(k)
        packing = not ordered  # packing reorders records; an ordered curriculum trains in its order
        rows = pack_bfd(encoded, spec.max_length) if packing else unpacked(encoded)
        policy, config = self.load_policy(self.state.policy_before(k))
        if packing:
            enable_packing(policy)
        if self.ctx.resolved.gradient_checkpointing:
            enable_gradient_checkpointing(policy)
        policy.train()
        task = SFTTask(rows, [], batch_size=spec.batch_size, pad_id=self.tok.pad_token_id, packed=packing,
                       seed=spec.seed + k)
        if ordered:
            task.epoch_batches = lambda epoch: make_batches(rows, spec.batch_size, self.tok.pad_token_id,  # type: ignore[method-assign]
                                                            packing, list(range(len(rows))))
        lr = self.cycle_lr(k)
        n_micro = len(task.epoch_batches(0))
        per_epoch, planned = total_steps(micro_batches_per_epoch=n_micro, grad_accum=spec.grad_accum,
                                         epochs=spec.epochs, max_steps=None)
        warmup = warmup_steps(planned, spec.warmup_ratio)
        optimizer = make_optimizer(self.ctx)

        def step_loss(model: Any, batch: Any, n_items: Any) -> tuple[Any, dict[str, Any]]:
            loss, stats = task.loss(model, batch)
            return loss / n_items, stats

        value_and_grad = nn.value_and_grad(policy, step_loss)
        micro_step, update_step, _ = _compiled_steps(policy, optimizer, value_and_grad, spec.max_grad_norm,
                                                     compiled=False)
        step_offset, tokens = self.state.step_before(k), 0
        losses: list[float] = []
        epochs: dict[int, list[Any]] = {}
        last_t = time.monotonic()
        for step in range(planned):
            epoch, within = divmod(step, per_epoch)
            if epoch not in epochs:
                epochs = {epoch: task.epoch_batches(epoch)}
            micro = epochs[epoch][within * spec.grad_accum:(within + 1) * spec.grad_accum]
            n_arr = mx.array(float(max(1, sum(b.items for b in micro))), dtype=mx.float32)
            lr_used = lr * lr_factor(spec.lr_scheduler, step, planned, warmup)
            optimizer.learning_rate = mx.array(lr_used, dtype=mx.float32)
            grads, loss_sum = None, mx.array(0.0)
            for b in micro:
                loss, _, grads = micro_step(b.arrays, n_arr, grads)
                loss_sum = loss_sum + loss
                mx.eval(grads, loss_sum)
            grad_norm = update_step(grads)
            mx.eval(policy.state, optimizer.state, grad_norm, loss_sum)
            tokens += sum(b.tokens for b in micro)
            loss_value = float(loss_sum.item())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} in RAFT cycle {k}; lower learning_rate")
            losses.append(loss_value)
            now = time.monotonic()
            metrics = {"cycle": float(k), "loss": loss_value, "grad_norm": float(grad_norm.item()),
                       "learning_rate": lr_used, "tokens": float(self.state.tokens_before(k) + tokens)}
            if now > last_t:
                metrics["tokens_per_second"] = sum(b.tokens for b in micro) / (now - last_t)
            last_t = now
            metrics.update(memory_metrics())
            self.run.append_metrics({"step": step_offset + step + 1, "ts": time.time(), **metrics})
            if step == 0 or (step + 1) % spec.log_every_steps == 0 or step + 1 == planned:
                self.ctx.reporter.progress(step_offset + step + 1, None, metrics)
            self.check_stop()
        name = "adapter" if config["fine_tune_type"] != "full" else "model"
        d = self.cycle_dir(k)
        tmp = d / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        from mlx.utils import tree_flatten

        mx.save_safetensors(str(tmp / WEIGHTS), dict(tree_flatten(policy.trainable_parameters())))
        write_json_atomic(tmp / "adapter_config.json", config)
        self.run.publish_dir(tmp, d / name)
        return {"trained": True, "steps": planned, "tokens": tokens, "policy": f"cycles/{k}/{name}",
                "learning_rate": lr, "records": len(encoded), "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None}

    # ---- the loop -----------------------------------------------------------------------------
    def _execute(self, attempt: int) -> RecipeResult:
        ctx, spec, state = self.ctx, self.spec, self.state
        assert self.reward is not None
        resumed_step = self.open_run(attempt)

        start_policy, _ = self.load_policy(None)
        trainable, total = parameter_counts(start_policy)
        start_policy.eval()
        before_samples = samples_before(ctx, start_policy, self.tok)
        eval_prompts, eval_on = (self.held_out, "eval") if self.held_out else (self.prompts, "train")
        ev_before = self.run.read_json("rl_eval_before.json")
        if not isinstance(ev_before, dict) or "stats" not in ev_before:
            ev_before = grpo.evaluate(start_policy, self.tok, eval_prompts, self.reward, spec)  # type: ignore[arg-type]
            self.run.write_json("rl_eval_before.json", ev_before)
        if "start_fingerprint" not in state.data:
            state.data["start_fingerprint"] = _fingerprint(start_policy)
            state.save()
        del start_policy

        try:
            for k in range(1, spec.cycles + 1):
                if not state.cycle_done(k):
                    self.run_cycle(k)
        except Stopped as stop:
            return self.stopped_result(stop, trainable, total, resumed_step)
        return self.finish(ev_before, eval_prompts, eval_on, before_samples, trainable, total, resumed_step)

    def finish(self, ev_before: dict[str, Any], eval_prompts: list[Any], eval_on: str,
               before_samples: list[str] | None, trainable: int, total: int, resumed_step: int | None) -> RecipeResult:
        spec, state = self.spec, self.state
        assert self.reward is not None
        final_rel = state.policy_before(spec.cycles + 1)
        steps = state.step_before(spec.cycles + 1)
        policy, config = self.load_policy(final_rel)
        policy.eval()
        ev_after = grpo.evaluate(policy, self.tok, eval_prompts, self.reward, spec)  # type: ignore[arg-type]
        policy.eval()
        before, after = ev_before["stats"].get("reward_mean"), ev_after["stats"].get("reward_mean")
        extras: dict[str, Any] = {
            "eval_on": eval_on, "eval_prompts": ev_before["prompts"], "eval_samples": ev_before["samples"],
            **grpo._eval_extras("eval_before_", ev_before), **grpo._eval_extras("eval_after_", ev_after),
            "eval_reward_before": before, "eval_reward_after": after,
        }
        if before is not None and after is not None:
            extras["eval_reward_gain"] = after - before
        extras.update(self.summary_extras())
        extras["generation"] = "mlx"
        samples = before_after(self.ctx, policy, self.tok, before_samples)
        if samples is not None:
            extras["samples"] = samples
        outputs = export_model(self.ctx, policy, config) if final_rel is not None else {}
        updated = final_rel is not None and _fingerprint(policy) != state.data.get("start_fingerprint")
        return RecipeResult(state="succeeded", steps=steps, total_steps=steps, weights_updated=updated,
                            trainable_parameters=trainable, total_parameters=total, resumed_from_step=resumed_step,
                            outputs=outputs, extras=extras)


def train(ctx: JobContext) -> RecipeResult:
    return Raft(ctx).execute()
