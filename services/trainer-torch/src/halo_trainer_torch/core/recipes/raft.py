"""RAFT recipe: rejection-sampling finetuning in cycles, resumable at the cycle and stage where it stopped.

Each cycle ``k`` runs five stages, each persisted before the next starts (see
:mod:`~..components.raft_state` for the files):

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
import random
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from halo_schemas.rl import RAFTSpec
from halo_schemas.training import RenderedSample
from halo_training.rewards import EvalResult, VerifierReward, make_transport
from halo_training.rl_prompts import (
    RLPrompt,
    has_chat_template,
    register_rl_formats,
    render_prompts,
    rl_prompts,
)
from transformers import TrainerCallback

from halo_trainer_torch.core.components.curriculum import (
    PromptItem,
    difficulty,
    load_historical_stats,
    select_prompts,
)
from halo_trainer_torch.core.components.data import TrainingData
from halo_trainer_torch.core.components.hooks import HaloTrainerMixin, memory_bytes, power_watts
from halo_trainer_torch.core.components.model import (
    apply_finetune,
    is_peft,
    load_base_model,
    load_tokenizer,
    parameter_counts,
)
from halo_trainer_torch.core.components.raft_state import (
    RaftState,
    VerifiedSample,
    append_jsonl,
    read_jsonl,
    repair_jsonl,
    select_samples,
    write_jsonl_atomic,
)
from halo_trainer_torch.core.components.rl_rollout import (
    SamplesLog,
    derive_seed,
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
from halo_trainer_torch.core.components.shaping import cycle_thresholds
from halo_trainer_torch.core.components.tokenize import SFTEncoder

METHOD = "raft"
TASK = "causal"
register_rl_formats("grpo", "raft")

log = logging.getLogger("halo_trainer_torch.raft")

#: Trainer log keys that are bookkeeping, not metrics.
_DROP = {"total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second", "num_tokens", "epoch",
         "step", "train_loss", "halo_tokens"}
#: ``raft_stage`` in metrics rows (numbers only): which stage of the cycle the row closes.
STAGE_CODES = {"generate": 1, "verify": 2, "select": 3, "train": 4}
#: Completions verified per verifier-sandbox round.
VERIFY_CHUNK = 256


def preview(spec: RAFTSpec, tokenizer: Any, data: TrainingData, num_samples: int) -> list[RenderedSample]:
    """Prompts as the rollout renders them (the sampled completions are what each cycle trains on)."""
    return render_prompts(spec, tokenizer, data, num_samples)


class Stopped(Exception):
    """The job control asked the run to stop (cancel / preempt) at a stage boundary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


class Raft:
    """One RAFT run: the cycle loop over the persisted state (see the module docstring)."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.spec: RAFTSpec = ctx.spec  # type: ignore[assignment]
        self.run = ctx.run
        self.prompts, self.held_out = rl_prompts(ctx.data, self.spec.data.text_field)
        self.by_index = {p.index: p for p in self.prompts}
        self.tok = load_tokenizer(ctx.resolved.model_path, self.spec.trust_remote_code)
        self.chat = has_chat_template(self.tok)
        self.state = RaftState.load(self.run)
        self.reward: VerifierReward | None = None
        self.labels: list[str] = []
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

    # ---- stages ---------------------------------------------------------------------------------
    def check_stop(self) -> None:
        reason = self.ctx.control.stop_reason()
        if reason is not None:
            raise Stopped(reason)

    def cycle_dir(self, k: int) -> Path:
        d = self.run.root / "cycles" / str(k)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def choose_prompts(self, k: int) -> tuple[list[int], bool, dict[str, Any]]:
        spec = self.spec
        hist, _ = self.state.history(k)
        items = [PromptItem(p.index, difficulty(p.complexity, p.text), p.text) for p in self.prompts]
        prior = load_historical_stats(spec.curriculum.historical_stats) if spec.curriculum.strategy == "historical" else {}
        choice = select_prompts(spec.curriculum, items, cycle=k, total_cycles=spec.cycles, history=hist, prior=prior)
        indices = choice.indices
        if spec.prompts_per_cycle is not None and len(indices) > spec.prompts_per_cycle:
            picked = set(random.Random(derive_seed(spec.seed, 7919 + k)).sample(indices, spec.prompts_per_cycle))
            indices = [i for i in indices if i in picked]  # keep the curriculum's order
        return indices, choice.ordered, choice.info

    def generate(self, k: int, policy: Any) -> dict[str, Any]:
        spec = self.spec
        indices, ordered, info = self.choose_prompts(k)
        path = self.cycle_dir(k) / "samples.jsonl"
        have = {int(r["prompt_index"]) for r in repair_jsonl(path)}
        todo = [i for i in indices if i not in have]
        backend = rollout_backend(policy, self.tok, spec)
        chunk = max(1, spec.rollout_batch_size // spec.num_generations)
        seed = derive_seed(spec.seed, 100_003 * k)
        for start in range(0, len(todo), chunk):
            self.check_stop()
            ps = [self.by_index[i] for i in todo[start:start + chunk]]
            results = backend.generate(requests_for(ps, self.tok, spec, n=spec.num_generations, seed=seed))
            append_jsonl(path, [{
                "prompt_index": p.index, "prompt": p.text, "seed": r.seed,
                "completions": [{"sample": c.index, "text": c.text, "num_tokens": c.num_tokens,
                                 "finish_reason": c.finish_reason} for c in r.completions],
            } for p, r in zip(ps, results, strict=True)])
        return {"prompts": len(indices), "samples": len(indices) * spec.num_generations, "indices": indices,
                "ordered": ordered, "curriculum": info, "resumed_prompts": len(have & set(indices))}

    def verify(self, k: int) -> dict[str, Any]:
        assert self.reward is not None
        d = self.cycle_dir(k)
        generated = read_jsonl(d / "samples.jsonl")
        path = d / "verified.jsonl"
        done_rows = repair_jsonl(path)
        done = {int(r["prompt_index"]) for r in done_rows}
        todo = [g for g in generated if int(g["prompt_index"]) not in done]
        chunk: list[dict[str, Any]] = []
        for g in todo + [None]:  # type: ignore[list-item]
            if g is not None:
                chunk.append(g)
            n = sum(len(c["completions"]) for c in chunk)
            if chunk and (g is None or n >= VERIFY_CHUNK):
                self.check_stop()
                texts, contexts, keys = [], [], []
                for row in chunk:
                    p = self.by_index[int(row["prompt_index"])]
                    for c in row["completions"]:
                        texts.append(c["text"])
                        contexts.append(p.context)
                        keys.append((p.index, int(c["sample"]), c.get("finish_reason", "stop")))
                batch = self.reward.score(texts, contexts)
                per_label = {lab: batch.reward(lab) for lab in batch.labels}
                append_jsonl(path, [VerifiedSample(
                    pi, si, texts[i], batch.total[i], batch.success[i], batch.compile_only[i], batch.errors[i],
                    {lab: per_label[lab][i] for lab in batch.labels}, fr).to_json()
                    for i, (pi, si, fr) in enumerate(keys)])
                chunk = []
        samples = [VerifiedSample.from_json(r) for r in read_jsonl(path)]
        return verify_stats(samples, self.labels)

    def select(self, k: int) -> dict[str, Any]:
        spec = self.spec
        _, outcomes = self.state.history(k)
        th = cycle_thresholds(spec.shaping, base_threshold=spec.reward_threshold, base_keep=spec.keep_top_fraction,
                              cycle=k, total_cycles=spec.cycles, history=outcomes)
        d = self.cycle_dir(k)
        samples = [VerifiedSample.from_json(r) for r in read_jsonl(d / "verified.jsonl")]
        sel = select_samples(samples, threshold=th.threshold, keep_fraction=th.keep_fraction,
                             require_success=spec.require_success, allow_compile_only=spec.allow_compile_only,
                             dedupe=spec.dedupe, max_per_prompt=spec.max_kept_per_prompt)
        order = {i: n for n, i in enumerate((self.state.stage(k, "generate") or {}).get("indices") or [])}
        kept = sorted(sel.kept, key=lambda s: (order.get(s.prompt_index, 0), -(s.total or 0.0), s.sample))
        write_jsonl_atomic(d / "selected.jsonl", [s.to_json() for s in kept])
        out: dict[str, Any] = {"threshold": th.threshold, "keep_fraction": th.keep_fraction, "eligible": sel.eligible,
                               "kept": len(kept), "rejected": dict(sel.rejected)}
        if not kept:
            out["why"] = sel.why_empty
        return out

    def train_cycle(self, k: int) -> dict[str, Any]:
        from trl import SFTConfig

        from halo_trainer_torch.core.components.batching import SFTCollator, build_sft_dataset

        spec = self.spec
        d = self.cycle_dir(k)
        sel = self.state.stage(k, "select") or {}
        if not sel.get("kept"):
            log.warning("RAFT cycle %d keeps no sample, so it does not train: %s", k, sel.get("why"))
            return {"trained": False, "steps": 0, "tokens": 0, "policy": None, "why": sel.get("why")}
        kept = [VerifiedSample.from_json(r) for r in read_jsonl(d / "selected.jsonl")]
        fmt = "messages" if self.chat else "prompt_completion"
        enc = SFTEncoder(self.tok, fmt, spec.max_length, completion_only=True)
        rows = []
        for s in kept:
            p = self.by_index[s.prompt_index]
            record = ({"messages": p.chat_messages() + [{"role": "assistant", "content": s.text}]} if self.chat
                      else {"prompt": p.text, "completion": s.text})
            e = enc.encode(record)
            if e.num_trained:
                rows.append({"input_ids": e.input_ids, "labels": e.labels})
        ordered = bool((self.state.stage(k, "generate") or {}).get("ordered"))
        packing = not ordered  # packing reorders records; an ordered curriculum trains in its order
        dataset = build_sft_dataset(rows, packing=packing, max_length=spec.max_length)
        lr = self.ctx.resolved.learning_rate * spec.lr_decay ** (k - 1)
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

    def checkpoint(self, k: int) -> dict[str, Any]:
        train = self.state.stage(k, "train") or {}
        step = self.state.step_before(k) + int(train.get("steps", 0))
        if train.get("trained"):
            staged = self.run.staging / f"checkpoint-{step}"
            shutil.rmtree(staged, ignore_errors=True)
            staged.mkdir(parents=True)
            (staged / "raft_checkpoint.json").write_text(
                f'{{"cycle": {k}, "policy": "{train["policy"]}", "step": {step}}}\n')
            (staged / "trainer_state.json").write_text(f'{{"global_step": {step}, "raft_cycle": {k}}}\n')
            final = self.run.finalize_checkpoint(staged)
            self.run.prune_checkpoints(self.spec.keep_checkpoints)
            self.prune_policies(k)
            self.ctx.reporter.checkpointed(step, str(final))
        self.write_prompt_stats(k)
        return {"step": step}

    def prune_policies(self, k: int) -> None:
        """Keep the weights of the newest ``keep_checkpoints`` trained cycles (older ones are only history)."""
        trained = [j for j in range(1, k + 1) if (self.state.stage(j, "train") or {}).get("trained")] + [k]
        keep = set(sorted(set(trained))[-self.spec.keep_checkpoints:])
        good = self.last_good_rel()
        if good is not None:  # a stop by the probe ends on it: it must outlive pruning
            keep.add(int(Path(good).parts[1]))
        for j in set(trained) - keep:
            for name in ("adapter", "model"):
                shutil.rmtree(self.run.root / "cycles" / str(j) / name, ignore_errors=True)

    def write_prompt_stats(self, k: int) -> None:
        """Per-prompt success rates over this run's cycles (a later run's 'historical' curriculum reads them)."""
        hist, _ = self.state.history(k + 1)
        pooled: dict[int, list[int]] = {}
        for cyc in hist.outcomes:
            for i, o in cyc.items():
                acc = pooled.setdefault(i, [0, 0])
                acc[0] += o.samples
                acc[1] += o.successes
        self.run.write_json("raft_prompt_stats.json", {"prompts": {
            self.by_index[i].text: ok / n for i, (n, ok) in sorted(pooled.items()) if n and i in self.by_index}})

    # ---- metrics ------------------------------------------------------------------------------
    def stage_metrics(self, k: int, stage: str, stats: dict[str, Any]) -> None:
        """A metrics row + progress event (numbers only) when a stage finishes."""
        step = self.state.step_before(k) + (int(stats.get("steps", 0)) if stage == "train" else 0)
        m: dict[str, float] = {"cycle": float(k)}
        if stage == "generate":
            m.update(raft_prompts=stats["prompts"], raft_samples=stats["samples"])
        elif stage == "verify":
            m.update({k2: v for k2, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        elif stage == "select":
            m.update(raft_threshold=stats["threshold"], raft_keep_fraction=stats["keep_fraction"],
                     raft_eligible=stats["eligible"], raft_kept=stats["kept"])
            m.update({f"raft_rejected_{r}": float(n) for r, n in stats["rejected"].items()})
        elif stage == "train":
            m.update(raft_trained=1.0 if stats["trained"] else 0.0, raft_cycle_steps=stats["steps"])
            if stats.get("learning_rate") is not None:
                m["raft_learning_rate"] = stats["learning_rate"]
        m = {key: float(v) for key, v in m.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        m["raft_stage"] = float(STAGE_CODES[stage])
        self.run.append_metrics({"step": step, "ts": time.time(), **m})
        self.ctx.reporter.progress(step, None, m)

    # ---- the loop -----------------------------------------------------------------------------
    def cycle_rows(self) -> list[dict[str, Any]]:
        rows = []
        for k in range(1, self.spec.cycles + 1):
            stages = {name: self.state.stage(k, name) for name in ("generate", "verify", "select", "train", "checkpoint")}
            if not any(stages.values()):
                continue
            g, v, s, t = (stages[n] or {} for n in ("generate", "verify", "select", "train"))
            row: dict[str, Any] = {
                "cycle": k, "prompts": g.get("prompts"), "samples": g.get("samples"),
                "reward_mean": v.get("reward_mean"), "pass_rate": v.get("pass_rate"),
                "threshold": s.get("threshold"), "keep_fraction": s.get("keep_fraction"),
                "eligible": s.get("eligible"), "kept": s.get("kept"), "rejected": s.get("rejected"),
                "trained": t.get("trained"), "steps": t.get("steps"), "learning_rate": t.get("learning_rate"),
                "loss_first": t.get("loss_first"), "loss_last": t.get("loss_last"),
                "attempts": {n: st.get("attempt") for n, st in stages.items() if st},
            }
            if s.get("why"):
                row["why"] = s["why"]
            rows.append(row)
        return rows

    def execute(self) -> RecipeResult:
        spec, state = self.spec, self.state
        attempt = state.start_attempt()
        self.reward = VerifierReward(spec.verifiers, make_transport(spec.verifier_transport, client_name="trainer-torch-rl"),
                                     use_cache=spec.verifier_cache, timeout_s=spec.verifier_timeout_s)
        self.labels = self.reward.labels
        try:
            self.reward.check()
            return self._execute(attempt)
        finally:
            self.reward.close()

    def _execute(self, attempt: int) -> RecipeResult:
        ctx, spec, state = self.ctx, self.spec, self.state
        assert self.reward is not None
        first_open = next((k for k in range(1, spec.cycles + 1) if not state.cycle_done(k)), spec.cycles + 1)
        resumed_step = state.step_before(first_open) if attempt > 1 else None
        if not self.run.checkpoint_steps():
            # A marker for "the start": a resume before the first trained cycle keeps the rows logged so far.
            staged = self.run.staging / "checkpoint-0"
            staged.mkdir(parents=True, exist_ok=True)
            (staged / "trainer_state.json").write_text('{"global_step": 0, "raft_cycle": 0}\n')
            self.run.finalize_checkpoint(staged)
        ctx.reporter.started(total_steps=None, resumed_from_step=resumed_step,
                             info={"tokens": state.tokens_before(first_open), "cycles": spec.cycles})

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

        samples_log = SamplesLog(self.run.root / "samples.jsonl")
        if self.prober is not None:
            self.prober.start()
        try:
            for k in range(1, spec.cycles + 1):
                if state.cycle_done(k):
                    if self.probe_cycle(k):
                        break
                    continue
                self.check_stop()
                policy = None
                if not state.done(k, "generate"):
                    policy = self.load_policy(state.policy_before(k), trainable=False)
                    stats = self.generate(k, policy)
                    state.mark(k, "generate", **stats)
                    self.stage_metrics(k, "generate", stats)
                del policy
                self.check_stop()
                if not state.done(k, "verify"):
                    stats = self.verify(k)
                    state.mark(k, "verify", **stats)
                    self.stage_metrics(k, "verify", stats)
                    self.log_samples(samples_log, k)
                self.check_stop()
                if not state.done(k, "select"):
                    stats = self.select(k)
                    state.mark(k, "select", **stats)
                    self.stage_metrics(k, "select", stats)
                self.check_stop()
                if not state.done(k, "train"):
                    stats = self.train_cycle(k)
                    state.mark(k, "train", **stats)
                    self.stage_metrics(k, "train", stats)
                if not state.done(k, "checkpoint"):
                    state.mark(k, "checkpoint", **self.checkpoint(k))
                if self.probe_cycle(k):
                    break
        except Stopped as stop:
            steps = state.step_before(next((k for k in range(1, spec.cycles + 1) if not state.cycle_done(k)),
                                           spec.cycles + 1))
            return RecipeResult(state="cancelled" if stop.reason == "cancelled" else "preempted", steps=steps,
                                stop_reason=stop.reason, trainable_parameters=trainable, total_parameters=total,
                                resumed_from_step=resumed_step, extras={"cycles": self.cycle_rows()})
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
        rows = self.cycle_rows()
        extras.update({
            "cycles": rows,
            "trained_cycles": sum(1 for r in rows if r.get("trained")),
            "empty_cycles": sum(1 for r in rows if r.get("kept") == 0),
            "kept_total": sum(int(r.get("kept") or 0) for r in rows),
            "rejected_total": dict(sum((Counter(r.get("rejected") or {}) for r in rows), Counter())),
            "verifiers": [{"label": lab, "name": ref.name, "weight": ref.weight} for lab, ref in
                          zip(self.reward.labels, self.reward.refs, strict=True)],
            "verifier_transport": spec.verifier_transport, "raft_attempts": state.attempt,
            "curriculum": spec.curriculum.strategy, "shaping": spec.shaping.strategy,
        })
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


def verify_stats(samples: list[VerifiedSample], labels: list[str]) -> dict[str, Any]:
    """Reward statistics of a cycle's verified samples, and per-prompt [samples, successes]."""
    def mean_std(xs: list[float]) -> tuple[float, float]:
        m = sum(xs) / len(xs)
        return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0

    out: dict[str, Any] = {"verified": len(samples)}
    totals = [s.total for s in samples if s.total is not None]
    if totals:
        out["reward_mean"], out["reward_std"] = mean_std(totals)
    for lab in labels:
        xs = [s.rewards.get(lab) for s in samples]
        vals = [float(x) for x in xs if x is not None]
        if vals:
            out[f"reward_{lab}_mean"], out[f"reward_{lab}_std"] = mean_std(vals)
    if samples:
        out["pass_rate"] = sum(s.success for s in samples) / len(samples)
        out["verifier_error_ratio"] = sum(s.total is None for s in samples) / len(samples)
    per: dict[str, list[int]] = {}
    for s in samples:
        acc = per.setdefault(str(s.prompt_index), [0, 0])
        acc[0] += 1
        acc[1] += int(s.success)
    out["per_prompt"] = per
    return out


def train(ctx: JobContext) -> RecipeResult:
    return Raft(ctx).execute()
