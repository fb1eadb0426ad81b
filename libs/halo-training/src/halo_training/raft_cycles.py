"""The RAFT cycle loop both trainers run (trainer-torch and trainer-mlx), minus what needs a framework.

:class:`RaftCycles` holds the backend-neutral stages of a cycle over the persisted state of
:mod:`halo_training.raft_state`: prompt choice (curriculum), generate (through the subclass's rollout backend),
verify, select (reward shaping + :func:`~halo_training.raft_state.select_samples`), the checkpoint marker, the
metrics rows, the per-cycle summary rows and the stop checks. A trainer's recipe subclasses it and supplies:

* ``rollout_backend(policy)`` and ``sample_requests(prompts, seed)`` — sampling from the cycle's policy;
* ``generation_policy(k)`` — the policy cycle ``k`` samples from;
* ``train_cycle(k)`` — SFT over :meth:`RaftCycles.sft_rows` (or :meth:`RaftCycles.untrained` when nothing was
  kept), returning the train stage's stats;
* ``_execute(attempt)`` — loading, held-out evaluation, the loop over :meth:`RaftCycles.run_cycle`, export.

``halo_sampling`` (seeds) is imported lazily: both trainers depend on it, this library does not.
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

from halo_training.curriculum import PromptItem, difficulty, load_historical_stats, select_prompts
from halo_training.raft_state import (
    RaftState,
    VerifiedSample,
    append_jsonl,
    read_jsonl,
    repair_jsonl,
    select_samples,
    verify_stats,
    write_jsonl_atomic,
)
from halo_training.rewards import VerifierReward, make_transport
from halo_training.rl_prompts import RLPrompt, has_chat_template, rl_prompts
from halo_training.runs import JobContext, RecipeResult
from halo_training.shaping import cycle_thresholds
from halo_training.tokenize import SFTEncoder

log = logging.getLogger("halo_training.raft")

#: ``raft_stage`` in metrics rows (numbers only): which stage of the cycle the row closes.
STAGE_CODES = {"generate": 1, "verify": 2, "select": 3, "train": 4}
#: Completions verified per verifier-sandbox round.
VERIFY_CHUNK = 256


def derive_seed(seed: int, index: int) -> int:
    from halo_sampling.backends.base import derive_seed as _derive

    return _derive(seed, index)


class Stopped(Exception):
    """The job control asked the run to stop (cancel / preempt) at a stage boundary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RaftCycles:
    """One RAFT run's cycle stages over ``raft_state.json`` (see the module docstring)."""

    #: ``client_name`` of the verifier transport.
    CLIENT = "trainer-rl"

    def __init__(self, ctx: JobContext, tokenizer: Any) -> None:
        self.ctx = ctx
        self.spec: Any = ctx.spec
        self.run = ctx.run
        self.prompts, self.held_out = rl_prompts(ctx.data, self.spec.data.text_field)
        self.by_index = {p.index: p for p in self.prompts}
        self.tok = tokenizer
        self.chat = has_chat_template(tokenizer)
        self.state = RaftState.load(self.run)
        self.reward: VerifierReward | None = None
        self.labels: list[str] = []

    # ---- what a trainer supplies ----------------------------------------------------------------
    def rollout_backend(self, policy: Any) -> Any:
        raise NotImplementedError

    def sample_requests(self, prompts: list[RLPrompt], seed: int) -> list[Any]:
        raise NotImplementedError

    def generation_policy(self, k: int) -> Any:
        raise NotImplementedError

    def train_cycle(self, k: int) -> dict[str, Any]:
        raise NotImplementedError

    def after_verify(self, k: int) -> None:
        """Called once cycle ``k``'s verify stage is recorded (trainer-torch logs samples here)."""

    def last_good_rel(self) -> str | None:
        """Run-relative policy that pruning must keep (the last one that passed a probe); None: none."""
        return None

    def _execute(self, attempt: int) -> RecipeResult:
        raise NotImplementedError

    # ---- the run --------------------------------------------------------------------------------
    def execute(self) -> RecipeResult:
        spec = self.spec
        attempt = self.state.start_attempt()
        self.reward = VerifierReward(spec.verifiers, make_transport(spec.verifier_transport, client_name=self.CLIENT),
                                     use_cache=spec.verifier_cache, timeout_s=spec.verifier_timeout_s)
        self.labels = self.reward.labels
        try:
            self.reward.check()
            return self._execute(attempt)
        finally:
            self.reward.close()

    def first_open(self) -> int:
        return next((k for k in range(1, self.spec.cycles + 1) if not self.state.cycle_done(k)), self.spec.cycles + 1)

    def open_run(self, attempt: int) -> int | None:
        """The start marker and the ``started`` event; returns the step a resumed attempt continues from."""
        first_open = self.first_open()
        resumed_step = self.state.step_before(first_open) if attempt > 1 else None
        if not self.run.checkpoint_steps():
            # A marker for "the start": a resume before the first trained cycle keeps the rows logged so far.
            staged = self.run.staging / "checkpoint-0"
            staged.mkdir(parents=True, exist_ok=True)
            (staged / "trainer_state.json").write_text('{"global_step": 0, "raft_cycle": 0}\n')
            self.run.finalize_checkpoint(staged)
        self.ctx.reporter.started(total_steps=None, resumed_from_step=resumed_step,
                                  info={"tokens": self.state.tokens_before(first_open), "cycles": self.spec.cycles})
        return resumed_step

    def run_cycle(self, k: int) -> None:
        """The stages of cycle ``k`` not done yet, each recorded before the next starts."""
        state = self.state
        self.check_stop()
        if not state.done(k, "generate"):
            policy = self.generation_policy(k)
            stats = self.generate(k, policy)
            del policy
            state.mark(k, "generate", **stats)
            self.stage_metrics(k, "generate", stats)
        self.check_stop()
        if not state.done(k, "verify"):
            stats = self.verify(k)
            state.mark(k, "verify", **stats)
            self.stage_metrics(k, "verify", stats)
            self.after_verify(k)
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

    def stopped_result(self, stop: Stopped, trainable: int, total: int, resumed_step: int | None) -> RecipeResult:
        return RecipeResult(state="cancelled" if stop.reason == "cancelled" else "preempted",
                            steps=self.state.step_before(self.first_open()), stop_reason=stop.reason,
                            trainable_parameters=trainable, total_parameters=total, resumed_from_step=resumed_step,
                            extras={"cycles": self.cycle_rows()})

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
        backend = self.rollout_backend(policy)
        chunk = max(1, spec.rollout_batch_size // spec.num_generations)
        seed = derive_seed(spec.seed, 100_003 * k)
        for start in range(0, len(todo), chunk):
            self.check_stop()
            ps = [self.by_index[i] for i in todo[start:start + chunk]]
            results = backend.generate(self.sample_requests(ps, seed))
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
        done = {int(r["prompt_index"]) for r in repair_jsonl(path)}
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

    # ---- helpers of the train stage -------------------------------------------------------------
    def untrained(self, k: int) -> dict[str, Any] | None:
        """The train stage's stats of a cycle that kept nothing (it does not train), else None."""
        sel = self.state.stage(k, "select") or {}
        if sel.get("kept"):
            return None
        log.warning("RAFT cycle %d keeps no sample, so it does not train: %s", k, sel.get("why"))
        return {"trained": False, "steps": 0, "tokens": 0, "policy": None, "why": sel.get("why")}

    def sft_rows(self, k: int, max_length: int) -> list[dict[str, list[int]]]:
        """Cycle ``k``'s kept samples as SFT rows: the prompt + the sampled completion, completion-only loss."""
        kept = [VerifiedSample.from_json(r) for r in read_jsonl(self.cycle_dir(k) / "selected.jsonl")]
        enc = SFTEncoder(self.tok, "messages" if self.chat else "prompt_completion", max_length, completion_only=True)
        rows = []
        for s in kept:
            p = self.by_index[s.prompt_index]
            record = ({"messages": p.chat_messages() + [{"role": "assistant", "content": s.text}]} if self.chat
                      else {"prompt": p.text, "completion": s.text})
            e = enc.encode(record)
            if e.num_trained:
                rows.append({"input_ids": e.input_ids, "labels": e.labels})
        return rows

    def ordered(self, k: int) -> bool:
        """Whether cycle ``k``'s curriculum fixed the training order (no shuffling, no packing)."""
        return bool((self.state.stage(k, "generate") or {}).get("ordered"))

    def cycle_lr(self, k: int) -> float:
        return self.ctx.resolved.learning_rate * self.spec.lr_decay ** (k - 1)

    # ---- checkpoint ---------------------------------------------------------------------------
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

    # ---- metrics and summary --------------------------------------------------------------------
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

    def summary_extras(self) -> dict[str, Any]:
        """The cycle rows and totals of the run summary."""
        assert self.reward is not None
        spec, rows = self.spec, self.cycle_rows()
        return {
            "cycles": rows,
            "trained_cycles": sum(1 for r in rows if r.get("trained")),
            "empty_cycles": sum(1 for r in rows if r.get("kept") == 0),
            "kept_total": sum(int(r.get("kept") or 0) for r in rows),
            "rejected_total": dict(sum((Counter(r.get("rejected") or {}) for r in rows), Counter())),
            "verifiers": [{"label": lab, "name": ref.name, "weight": ref.weight} for lab, ref in
                          zip(self.reward.labels, self.reward.refs, strict=True)],
            "verifier_transport": spec.verifier_transport, "raft_attempts": self.state.attempt,
            "curriculum": spec.curriculum.strategy, "shaping": spec.shaping.strategy,
        }
