"""RAFT recipe: rejection-sampling finetuning in cycles, resumable at the cycle and stage where it stopped.

Each cycle ``k`` runs five stages, each persisted before the next starts (see
:mod:`halo_training.raft_state` for the files):

1. **generate** — the curriculum picks the cycle's prompts; the rollout backend samples ``num_generations``
   completions per prompt from the current policy (per-prompt seeds), appended to
   ``cycles/<k>/samples.jsonl`` chunk by chunk;
2. **verify** — every completion is scored by the job's verifiers (batched, over the bus or in-process):
   ``verified.jsonl``;
3. **select** — reward shaping sets the cycle's threshold and kept fraction; the training-eligible samples
   (successful, not compile-only unless allowed, reward >= threshold, not duplicates) are ranked and the top
   fraction kept: ``selected.jsonl``. Every rejection is counted by reason;
4. **train** — SFT for ``epochs`` over the kept samples (completion-only loss) at learning rate
   ``learning_rate x lr_decay^(k-1)``; the policy is written to ``cycles/<k>/adapter`` (or ``model``). A cycle
   that keeps nothing does not train, and says why (its rejection histogram);
5. **checkpoint** — a marker ``checkpoints/checkpoint-<step>`` and a ``checkpointed`` event.

Killing the trainer at any point and starting it again continues at the first unfinished stage: completed
prompts are not regenerated, completed verifications not redone. Mean verifier reward on held-out prompts
before and after is in the summary (``eval_reward_before`` / ``eval_reward_after``), with a row per cycle.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from typing import Any

from halo_schemas.rl import RAFTSpec
from halo_schemas.training import RenderedSample
from halo_training.raft_cycles import RaftCycles, Stopped
from halo_training.raft_state import (
    read_jsonl,
)
from halo_training.rewards import EvalResult
from halo_training.rl_prompts import (
    RLPrompt,
    register_rl_formats,
    render_prompts,
)
from transformers import TrainerCallback

from halo_trainer_torch.core.components.data import TrainingData
from halo_trainer_torch.core.components.hooks import HaloTrainerMixin, memory_bytes, power_watts
from halo_trainer_torch.core.components.model import (
    apply_finetune,
    is_peft,
    load_base_model,
    load_tokenizer,
    parameter_counts,
)
from halo_trainer_torch.core.components.rl_rollout import (
    SamplesLog,
    eval_summary,
    evaluate_policy,
    load_eval_before,
    requests_for,
    rollout_backend,
    save_eval_before,
)
from halo_trainer_torch.core.components.session import (
    JobContext,
    RecipeResult,
    generate_samples,
    samples_before,
    trainable_fingerprint,
    training_kwargs,
)

METHOD = "raft"
TASK = "causal"
register_rl_formats("grpo", "raft")

log = logging.getLogger("halo_trainer_torch.raft")

#: Trainer log keys that are bookkeeping, not metrics.
_DROP = {"total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second", "num_tokens", "epoch",
         "step", "train_loss", "halo_tokens"}


def preview(spec: RAFTSpec, tokenizer: Any, data: TrainingData, num_samples: int) -> list[RenderedSample]:
    """Prompts as the rollout renders them (the sampled completions are what each cycle trains on)."""
    return render_prompts(spec, tokenizer, data, num_samples)


class CycleCallback(TrainerCallback):
    """Metrics rows, rate-limited progress and stop checks for one cycle's SFT (steps continue the run's count)."""

    def __init__(self, ctx: JobContext, *, cycle: int, step_offset: int, tokens_offset: int) -> None:
        self.ctx, self.cycle = ctx, cycle
        self.step_offset, self.tokens_offset = step_offset, tokens_offset
        self.stop_reason: str | None = None
        self.losses: list[float] = []
        self._last_emit = 0.0
        self._last_t = time.monotonic()
        self._last_tokens = tokens_offset
        self.tokens = tokens_offset

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        reason = self.ctx.control.stop_reason()
        if reason is not None:
            self.stop_reason = reason
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not logs or "train_runtime" in logs:
            return
        now = time.monotonic()
        step = self.step_offset + int(state.global_step)
        metrics: dict[str, float] = {"cycle": float(self.cycle)}
        for key, value in logs.items():
            if key in _DROP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            metrics[key] = float(value)
        if "loss" in metrics:
            self.losses.append(metrics["loss"])
        if "halo_tokens" in logs:
            tokens = self.tokens_offset + int(logs["halo_tokens"])
            dt = now - self._last_t
            if dt > 0 and tokens > self._last_tokens:
                metrics["tokens_per_second"] = (tokens - self._last_tokens) / dt
            metrics["tokens"] = float(tokens)
            self.tokens, self._last_tokens, self._last_t = tokens, tokens, now
        mem = memory_bytes()
        if mem is not None:
            metrics["memory_bytes"] = mem
        self.ctx.run.append_metrics({"step": step, "ts": time.time(), **metrics})
        if now - self._last_emit >= self.ctx.spec.progress_interval_s:
            power = power_watts()
            if power is not None:
                metrics["power_watts"] = power
            self._last_emit = now
            self.ctx.reporter.progress(step, None, metrics)


def _trainer_cls(ordered: bool) -> type:
    """``HaloTrainerMixin`` + TRL's ``SFTTrainer``; ``ordered`` keeps the curriculum's order (no shuffling)."""
    from trl import SFTTrainer

    attrs: dict[str, Any] = {}
    if ordered:
        from torch.utils.data import SequentialSampler

        def _get_train_sampler(self: Any, *args: Any, **kwargs: Any) -> Any:
            return SequentialSampler(self.train_dataset)

        attrs["_get_train_sampler"] = _get_train_sampler
    return type("HaloRAFTTrainer", (HaloTrainerMixin, SFTTrainer), attrs)


class Raft(RaftCycles):
    """One RAFT run: the cycle loop over the persisted state (see the module docstring)."""

    CLIENT = "trainer-torch-rl"

    def __init__(self, ctx: JobContext) -> None:
        super().__init__(ctx, load_tokenizer(ctx.resolved.model_path, ctx.spec.trust_remote_code))
        self.spec: RAFTSpec = ctx.spec  # type: ignore[assignment]
        self.samples_log = SamplesLog(self.run.root / "samples.jsonl")
        self.prober = self._prober()

    def _prober(self) -> Any:
        """The spec's ``probe`` (every cycle's policy, as a job on the eval service), or None."""
        if self.spec.probe is None:
            return None
        from halo_trainer_torch.core.components.probe import Prober, bus_submitter

        submit = bus_submitter(self.ctx.reporter, self.spec.probe.timeout_s)
        if submit is None:
            log.warning("probe: no bus to reach the eval service from this process; probing is off")
            return None
        return Prober(self.spec.probe, base_model=self.spec.model, run=self.run, submit=submit,
                      reporter=self.ctx.reporter)

    def probe_cycle(self, k: int) -> bool:
        """Probe the policy cycle ``k`` trained (once, also across attempts); True when the run must stop."""
        if self.prober is None:
            return False
        done = next((h for h in self.prober.history if h.get("cycle") == k), None)
        if done is None:
            trained = (self.state.stage(k, "train") or {}).get("trained")
            rel = self.state.policy_before(k + 1)
            if not trained or rel is None:
                return False
            self.prober.check(self.run.root / rel, self.state.step_before(k + 1), cycle=k)
            done = self.prober.history[-1]
        if not done["ok"] and self.spec.probe.on_regression == "stop":
            self.prober.stopped_at = done["step"]
            return True
        return False

    def last_good_rel(self) -> str | None:
        """Run-relative policy of the last cycle that passed its probe (None: the base model)."""
        good = self.prober.last_good if self.prober is not None else None
        return str(good.relative_to(self.run.root)) if good is not None else None

    # ---- policies -------------------------------------------------------------------------------
    def load_policy(self, rel: str | None, *, trainable: bool) -> Any:
        """The policy a cycle starts from: the base (+ a fresh, seeded adapter) or an earlier cycle's output."""
        from transformers import set_seed

        spec, resolved = self.spec, self.ctx.resolved
        if spec.finetune == "full":
            return load_base_model(spec, resolved, TASK, path=str(self.run.root / rel) if rel else None)
        base = load_base_model(spec, resolved, TASK)
        if rel is None:
            set_seed(spec.seed)  # the same initial adapter whichever attempt builds it
            return apply_finetune(base, spec, resolved, TASK)
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(self.run.root / rel), is_trainable=trainable)

    # ---- stages (the others are RaftCycles') ----------------------------------------------------
    def rollout_backend(self, policy: Any) -> Any:
        return rollout_backend(policy, self.tok, self.spec)

    def sample_requests(self, prompts: list[RLPrompt], seed: int) -> list[Any]:
        return requests_for(prompts, self.tok, self.spec, n=self.spec.num_generations, seed=seed)

    def generation_policy(self, k: int) -> Any:
        return self.load_policy(self.state.policy_before(k), trainable=False)

    def after_verify(self, k: int) -> None:
        self.log_samples(self.samples_log, k)

    def train_cycle(self, k: int) -> dict[str, Any]:
        from trl import SFTConfig

        from halo_trainer_torch.core.components.batching import SFTCollator, build_sft_dataset

        spec = self.spec
        d = self.cycle_dir(k)
        skipped = self.untrained(k)
        if skipped is not None:
            return skipped
        rows = self.sft_rows(k, spec.max_length)
        ordered = self.ordered(k)
        packing = not ordered  # packing reorders records; an ordered curriculum trains in its order
        dataset = build_sft_dataset(rows, packing=packing, max_length=spec.max_length)
        lr = self.cycle_lr(k)
        step_offset, tokens_offset = self.state.step_before(k), self.state.tokens_before(k)
        policy = self.load_policy(self.state.policy_before(k), trainable=True)
        kw = training_kwargs(self.ctx)
        kw.update(output_dir=str(self.run.staging / f"cycle-{k}"), learning_rate=lr, num_train_epochs=spec.epochs,
                  max_steps=-1, save_strategy="no", eval_strategy="no", eval_steps=None, seed=spec.seed + k,
                  data_seed=spec.seed + k, logging_first_step=True)
        args = SFTConfig(**kw, max_length=None, packing=False, padding_free=False,
                         dataset_kwargs={"skip_prepare_dataset": True})
        cb = CycleCallback(self.ctx, cycle=k, step_offset=step_offset, tokens_offset=tokens_offset)
        trainer = _trainer_cls(ordered)(model=policy, args=args, train_dataset=dataset, processing_class=self.tok,
                                        data_collator=SFTCollator(self.tok.pad_token_id, packed=packing),
                                        callbacks=[cb])
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        for noisy in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(noisy)
        trainer.train()
        if cb.stop_reason is not None:
            raise Stopped(cb.stop_reason)
        model = trainer.accelerator.unwrap_model(trainer.model)
        name = "adapter" if is_peft(model) else "model"
        tmp = d / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        self.tok.save_pretrained(str(tmp))
        self.run.publish_dir(tmp, d / name)
        shutil.rmtree(self.run.staging / f"cycle-{k}", ignore_errors=True)
        return {"trained": True, "steps": int(trainer.state.global_step), "tokens": cb.tokens - tokens_offset,
                "policy": f"cycles/{k}/{name}", "learning_rate": lr, "records": len(rows),
                "loss_first": cb.losses[0] if cb.losses else None, "loss_last": cb.losses[-1] if cb.losses else None}

    # ---- the loop -----------------------------------------------------------------------------
    def _execute(self, attempt: int) -> RecipeResult:
        ctx, spec, state = self.ctx, self.spec, self.state
        assert self.reward is not None
        resumed_step = self.open_run(attempt)

        start_policy = self.load_policy(None, trainable=False)
        trainable, total = parameter_counts(start_policy)
        before_samples = samples_before(ctx, start_policy, self.tok)
        eval_prompts, eval_on = (self.held_out, "eval") if self.held_out else (self.prompts, "train")
        ev_before = load_eval_before(self.run)
        if ev_before is None:
            ev_before = evaluate_policy(start_policy, self.tok, eval_prompts, self.reward, spec, seed=spec.seed)
            save_eval_before(self.run, ev_before)
        if "start_fingerprint" not in state.data:
            state.data["start_fingerprint"] = trainable_fingerprint(start_policy)
            state.save()
        del start_policy

        if self.prober is not None:
            self.prober.start()
        try:
            for k in range(1, spec.cycles + 1):
                if state.cycle_done(k):
                    if self.probe_cycle(k):
                        break
                    continue
                self.run_cycle(k)
                if self.probe_cycle(k):
                    break
        except Stopped as stop:
            return self.stopped_result(stop, trainable, total, resumed_step)
        return self.finish(ev_before, eval_prompts, eval_on, before_samples, trainable, total, resumed_step)

    def log_samples(self, samples_log: SamplesLog, k: int) -> None:
        if not self.spec.log_samples:
            return
        rows = read_jsonl(self.cycle_dir(k) / "verified.jsonl")
        if samples_log.path.exists():
            samples_log.rewind(lambda r: int(r.get("cycle", 0)) != k)  # a re-verified cycle replaces its rows
        n = len(rows)
        limit = self.spec.log_samples
        picks = sorted({round(i * (n - 1) / max(1, limit - 1)) for i in range(min(limit, n))}) if n else []
        samples_log.append([{"cycle": k, "step": self.state.step_before(k), "prompt": self.by_index[int(r["prompt_index"])].text,
                             "completion": r["text"], "reward": r["total"], "rewards": r["rewards"],
                             "success": r["success"], "error": r["error"]} for r in (rows[i] for i in picks)])

    def finish(self, ev_before: EvalResult, eval_prompts: list[RLPrompt], eval_on: str,
               before_samples: list[str] | None, trainable: int, total: int, resumed_step: int | None) -> RecipeResult:
        spec, state = self.spec, self.state
        assert self.reward is not None
        stopped = self.prober is not None and self.prober.stopped_at is not None
        # Stopped by the probe: the run ends on the last cycle that passed (or the base model).
        final_rel = self.last_good_rel() if stopped else state.policy_before(spec.cycles + 1)
        steps = self.prober.stopped_at if stopped else state.step_before(spec.cycles + 1)
        # trainable=True: the fingerprint below compares the same (trainable) parameters as at the start
        policy = self.load_policy(final_rel, trainable=True)
        ev_after = evaluate_policy(policy, self.tok, eval_prompts, self.reward, spec, seed=spec.seed)
        extras: dict[str, Any] = eval_summary(ev_before, ev_after, eval_on)
        extras.update(self.summary_extras())
        if self.prober is not None:
            extras["probe"] = self.prober.summary()
        if spec.sample_prompts and before_samples is not None:
            after = generate_samples(policy, self.tok, spec.sample_prompts, spec.sample_max_new_tokens)
            extras["samples"] = [{"prompt": p, "before": b, "after": a}
                                 for p, b, a in zip(spec.sample_prompts, before_samples, after, strict=True)]
        outputs: dict[str, str] = {}
        if final_rel is not None:
            outputs = self.export(final_rel, policy)
        updated = final_rel is not None and trainable_fingerprint(policy) != state.data.get("start_fingerprint")
        return RecipeResult(state="succeeded", steps=steps, total_steps=steps, weights_updated=updated,
                            stop_reason="probe-regressed" if stopped else None,
                            trainable_parameters=trainable, total_parameters=total, resumed_from_step=resumed_step,
                            outputs=outputs, extras=extras)

    def export(self, final_rel: str, policy: Any) -> dict[str, str]:
        """The last trained policy as the run's adapter/ (or final/), plus a merged final/ when asked."""
        run, spec = self.run, self.spec
        src = run.root / final_rel
        adapter = final_rel.endswith("/adapter")
        target = run.adapter if adapter else run.final
        tmp = run.root / f"{target.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        final = run.publish_dir(tmp, target)
        outputs = {target.name: str(final)}
        self.ctx.reporter.artifact("adapter" if adapter else "model", "peft" if adapter else "hf", str(final))
        if adapter and spec.merge_adapter:
            merged_tmp = run.root / "final.tmp"
            shutil.rmtree(merged_tmp, ignore_errors=True)
            merged = policy.merge_and_unload()
            merged.save_pretrained(str(merged_tmp))
            self.tok.save_pretrained(str(merged_tmp))
            final_dir = run.publish_dir(merged_tmp, run.final)
            outputs["final"] = str(final_dir)
            self.ctx.reporter.artifact("model", "hf", str(final_dir))
        return outputs


def train(ctx: JobContext) -> RecipeResult:
    return Raft(ctx).execute()
