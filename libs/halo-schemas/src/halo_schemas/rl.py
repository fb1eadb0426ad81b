"""RL job specs with verifier-grounded rewards: GRPO and RAFT (``halo.job.trainer-torch.grpo|raft``).

Both recipes sample completions for each prompt, score them with one or more verifiers of
``verifier-sandbox`` (each a :class:`VerifierRef`: name, weight, params) and learn from the scores:

* **GRPO** — group-relative advantages over ``num_generations`` samples per prompt, a clipped policy
  objective (the loss variants TRL offers), optional KL penalty ``beta`` against the starting model;
* **RAFT** — rejection-sampling finetuning in cycles: generate, verify, keep the training-eligible
  samples (successful, reward >= threshold, the top fraction), SFT one epoch on them, decay the learning
  rate, checkpoint; with curriculum strategies (which prompts each cycle) and reward shaping (how strict
  each cycle's selection is).

Usage::

    spec = GRPOSpec.model_validate({"model": "Qwen/Qwen2.5-0.5B-Instruct", "data": {"train": "tasks.jsonl"},
                                    "verifiers": [{"name": "humaneval"}, {"name": "regex_format", "weight": 0.2,
                                                   "params": {"pattern": "^```python"}}]})
    TRAINING_JOB_SPECS["raft"]        # -> RAFTSpec (halo_schemas.methods)

Prompt records are JSONL lines ``{"prompt": "...", "context": {...}}`` (``context`` is the verifier's
:class:`~halo_schemas.verifiers.VerifyContext`: tests, reference, cases…), or ``messages`` / ``prompt`` +
``completion`` records whose final answer becomes ``context.reference``. See docs/rl.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from halo_schemas.base import UserInput
from halo_schemas.training import DataSpec, TrainSpecBase
from halo_schemas.verifiers import VerifierSpec

GrpoLossType = Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"]
CurriculumStrategy = Literal["none", "complexity", "progressive", "adaptive", "historical"]
ShapingStrategy = Literal["fixed", "annealing", "warmup", "adaptive"]


class VerifierRef(UserInput):
    """One verifier of an RL job's reward, with its weight in the total. The total reward of a completion
    is the weighted mean of its verifiers' graduated rewards (each in [0, 1]), so it stays in [0, 1]."""

    schema_id = "halo.spec.verifier-ref.v1"

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_.-]*$", max_length=100,
        description="Registered verifier name (see `halo-forge verifiers list`), e.g. 'regex_format', 'humaneval'.",
    )
    weight: float = Field(default=1.0, gt=0.0, le=1000.0, description="Weight of this verifier in the total reward.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Verifier parameters, validated by verifier-sandbox against its schema."
    )
    label: str | None = Field(
        default=None, pattern=r"^[a-z][a-z0-9_]*$", max_length=40,
        description="Name in metrics (reward_<label>_mean). Default: the verifier name with non-alphanumerics "
        "replaced by '_' (a repeated name gets _2, _3...).",
    )

    def spec(self) -> VerifierSpec:
        """The :class:`VerifierSpec` sent to verifier-sandbox."""
        return VerifierSpec(name=self.name, params=dict(self.params))


class RLDataSpec(DataSpec):
    """Prompts of an RL job. Records: ``{"prompt": "...", "context": {...}}`` (plain-text prompt in
    ``text_field``), ``{"prompt": ..., "completion": ...}`` or ``{"messages": [...]}`` (the final assistant
    answer is used as ``context.reference`` when the context has none). ``eval`` / ``eval_fraction`` give the
    held-out prompts whose mean reward is reported before and after training."""

    schema_id = "halo.spec.rl-data.v1"

    text_field: str = Field(
        default="prompt", min_length=1, description="Field holding a plain-text prompt (records without 'completion')."
    )


class RLSpecBase(TrainSpecBase):
    """What GRPO and RAFT share: prompts, verifiers, sampling, held-out evaluation."""

    data: RLDataSpec = Field(description="Prompts (and optional held-out prompts) with their verifier contexts.")
    verifiers: list[VerifierRef] = Field(
        min_length=1, max_length=16, description="Verifiers whose weighted mean reward the policy learns to raise."
    )
    verifier_transport: Literal["bus", "local"] = Field(
        default="bus",
        description="bus: batches go to the verifier-sandbox service over NATS (HALO_NATS_URL); local: the verifier "
        "library runs in the trainer process (same verifiers and sandbox; for tests and single-machine scripts).",
    )
    verifier_timeout_s: float = Field(
        default=600.0, gt=0, le=7200, description="Longest wait for one batch of verifications before the job fails."
    )
    verifier_cache: bool = Field(
        default=True, description="Let verifier-sandbox answer identical (completion, context) pairs from its cache."
    )
    num_generations: int = Field(
        default=8, ge=2, le=256, description="Completions sampled per prompt (GRPO's group size; RAFT's N)."
    )
    temperature: float = Field(default=1.0, gt=0.0, le=10.0, description="Sampling temperature of the rollouts (> 0).")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling of the rollouts (1 disables it).")
    max_new_tokens: int = Field(default=256, ge=1, le=32768, description="Longest completion in tokens.")
    stop: list[str] = Field(
        default_factory=list, max_length=16,
        description="Stop strings: a completion's text is cut before the first one (its tokens stay trained).",
    )
    rollout_batch_size: int = Field(
        default=64, ge=1, le=4096, description="Sequences (prompts x samples) decoded together by the rollout backend."
    )
    eval_num_generations: int = Field(
        default=4, ge=1, le=64,
        description="Samples per held-out prompt for the before/after reward (sampled at 'temperature', fixed seed).",
    )
    eval_max_prompts: int = Field(default=64, ge=1, le=10000, description="Held-out prompts evaluated at most.")
    log_samples: int = Field(
        default=4, ge=0, le=256,
        description="Completions with their rewards written to samples.jsonl per logged step (GRPO) or cycle (RAFT).",
    )

    def code_requests(self) -> list[str]:
        # A judge named "package.module:function" is imported into the verifying process (llm_judge).
        out = super().code_requests()
        for i, ref in enumerate(self.verifiers):
            judge = ref.params.get("judge")
            if isinstance(judge, str) and ":" in judge:
                out.append(f"verifiers[{i}].params.judge")
        return out

    @model_validator(mode="after")
    def _check_rl(self) -> RLSpecBase:
        labels = resolve_labels(self.verifiers)
        if len(set(labels)) != len(labels):
            raise ValueError(f"verifiers: labels must be unique, got {labels}")
        if self.finetune == "pissa":
            raise ValueError("finetune 'pissa' is not supported by RL recipes (its reference and per-cycle reload "
                             "need the unmodified base weights): use lora, dora, rslora, qlora or full")
        if self.early_stopping is not None:
            raise ValueError("early_stopping watches the eval loss, which RL recipes do not compute; the held-out "
                             "reward is reported instead (eval_every_steps for GRPO)")
        if self.torch_compile:
            raise ValueError("torch_compile is not supported by RL recipes: the rollouts between steps run the "
                             "same model in generation mode, which would recompile it every cycle")
        return self


def resolve_labels(refs: list[VerifierRef]) -> list[str]:
    """Metric labels of ``refs``: the explicit label, else the sanitised name (repeats get _2, _3...)."""
    import re

    out: list[str] = []
    seen: dict[str, int] = {}
    for r in refs:
        if r.label:
            out.append(r.label)
            continue
        base = re.sub(r"[^a-z0-9]+", "_", r.name.lower()).strip("_") or "verifier"
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return out


class GRPOSpec(RLSpecBase):
    """Group Relative Policy Optimization with verifier rewards (TRL's GRPOTrainer under Halo's hooks)."""

    schema_id = "halo.spec.grpo.v1"

    batch_size: int = Field(
        default=16, ge=1,
        description="Completions per device per micro-batch (= prompts x num_generations; batch_size x grad_accum x "
        "num_processes must be a multiple of num_generations).",
    )
    loss_type: GrpoLossType = Field(
        default="dapo",
        description="Loss aggregation as in TRL: grpo (per-sequence mean), dr_grpo (constant max_new_tokens "
        "normaliser), dapo (tokens of the accumulated batch), bnpo (tokens of the local batch), cispo (clipped IS "
        "weights), sapo (soft gate), luspo (length-unbiased sequence level), vespo (variational sequence level).",
    )
    beta: float = Field(
        default=0.0, ge=0.0, le=100.0,
        description="KL penalty coefficient against the starting model (k3 estimator); 0 = reference-free.",
    )
    epsilon: float = Field(default=0.2, gt=0.0, lt=1.0, description="Lower clipping bound of the ratio: 1 - epsilon.")
    epsilon_high: float | None = Field(
        default=None, gt=0.0, le=10.0,
        description="Upper clipping bound 1 + epsilon_high (DAPO's clip-higher, e.g. 0.28). Default: epsilon.",
    )
    delta: float | None = Field(
        default=None, gt=1.0, description="Two-sided clipping: cap the ratio at delta (> 1 + epsilon), INTELLECT-2.")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        default="group",
        description="Divide advantages by the reward std of the group (GRPO), of the batch, or not at all (Dr. GRPO).",
    )
    num_iterations: int = Field(
        default=1, ge=1, le=16, description="Optimisation passes over each generated batch (mu in the GRPO paper)."
    )
    importance_sampling_level: Literal["token", "sequence"] = Field(
        default="token", description="Importance ratios per token (GRPO) or per sequence (GSPO)."
    )
    mask_truncated_completions: bool = Field(
        default=False, description="Leave completions that hit max_new_tokens out of the loss (DAPO)."
    )
    generation: Literal["rollout", "trl"] = Field(
        default="rollout",
        description="rollout: Halo's batched rollout backend wrapping the policy in memory (weights_version bumped per "
        "optimizer step); trl: TRL's model.generate path.",
    )

    @model_validator(mode="after")
    def _check_grpo(self) -> GRPOSpec:
        effective = self.batch_size * self.grad_accum * self.num_processes
        if effective % self.num_generations:
            raise ValueError(
                f"batch_size x grad_accum x num_processes = {effective} must be a multiple of num_generations "
                f"({self.num_generations}): each optimizer step needs whole groups of samples"
            )
        if self.delta is not None and self.delta <= 1.0 + (self.epsilon_high or self.epsilon):
            raise ValueError("delta must exceed 1 + epsilon_high (or 1 + epsilon)")
        return self


class CurriculumSpec(UserInput):
    """Which prompts a RAFT cycle samples. Difficulty is a record's ``complexity`` field when present, else
    the prompt's length; 'historical' uses the success rates measured in earlier cycles (and runs)."""

    schema_id = "halo.spec.raft-curriculum.v1"

    strategy: CurriculumStrategy = Field(
        default="none",
        description="none: every prompt in file order; complexity: every prompt, easiest first (and trained in that "
        "order); progressive: the easiest fraction, growing each cycle to all prompts; adaptive: a window of prompts "
        "around a difficulty that rises when the last cycle's pass rate is high and falls when it is low; historical: "
        "ordered by past success rate, easiest first, prompts already mastered skipped.",
    )
    progressive_start: float = Field(default=0.34, gt=0.0, le=1.0, description="progressive: fraction used in cycle 1.")
    progressive_increment: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="progressive: fraction added per cycle. Default: reach all prompts in the last cycle.",
    )
    adaptive_start: float = Field(
        default=0.25, ge=0.0, le=1.0, description="adaptive: difficulty (0 easiest .. 1 hardest) of cycle 1."
    )
    adaptive_step: float = Field(default=0.25, gt=0.0, le=1.0, description="adaptive: difficulty change per cycle.")
    adaptive_window: float = Field(
        default=0.5, gt=0.0, le=1.0, description="adaptive: fraction of the prompts taken around the difficulty."
    )
    adaptive_raise_above: float = Field(
        default=0.7, ge=0.0, le=1.0, description="adaptive: raise the difficulty when the last pass rate exceeds this."
    )
    adaptive_lower_below: float = Field(
        default=0.2, ge=0.0, le=1.0, description="adaptive: lower the difficulty when the last pass rate is below this."
    )
    historical_stats: str | None = Field(
        default=None,
        description="historical: a JSON file {prompt text: success rate} or an earlier RAFT run directory whose "
        "per-prompt success rates seed the ordering.",
    )
    historical_prior: float = Field(
        default=0.5, ge=0.0, le=1.0, description="historical: success rate assumed for a prompt never seen."
    )
    skip_mastered: bool = Field(
        default=True, description="historical: skip prompts whose every sample succeeded in the last cycle they ran."
    )

    @model_validator(mode="after")
    def _check(self) -> CurriculumSpec:
        if self.adaptive_lower_below > self.adaptive_raise_above:
            raise ValueError("adaptive_lower_below must not exceed adaptive_raise_above")
        return self


class ShapingSpec(UserInput):
    """How strict each RAFT cycle's selection is: the reward threshold and the kept top fraction per cycle,
    moving from lenient (``start_*``) towards the spec's ``reward_threshold`` / ``keep_top_fraction``."""

    schema_id = "halo.spec.raft-shaping.v1"

    strategy: ShapingStrategy = Field(
        default="fixed",
        description="fixed: the spec's threshold and fraction every cycle; annealing: linear from start_* in cycle "
        "1 to the spec's values in the last cycle; warmup: start_* for warmup_cycles cycles, then the spec's; "
        "adaptive: start_* in cycle 1, then stricter when the last pass rate is high, more lenient when it (or the "
        "number kept) is low.",
    )
    start_threshold: float = Field(default=0.0, ge=0.0, le=1.0, description="Lenient reward threshold.")
    start_keep_fraction: float = Field(default=0.8, gt=0.0, le=1.0, description="Lenient kept top fraction.")
    warmup_cycles: int = Field(default=1, ge=1, le=1000, description="warmup: cycles at the lenient values.")
    adaptive_target_pass_rate: float = Field(
        default=0.3, gt=0.0, le=1.0, description="adaptive: pass rate that keeps the thresholds where they are."
    )
    adaptive_step: float = Field(default=0.1, gt=0.0, le=1.0, description="adaptive: threshold change per cycle.")
    adaptive_min_kept: int = Field(
        default=8, ge=0, description="adaptive: relax when the last cycle kept fewer samples than this."
    )


class RAFTSpec(RLSpecBase):
    """RAFT: rejection-sampling finetuning in cycles (generate -> verify -> select -> SFT -> checkpoint)."""

    schema_id = "halo.spec.raft.v1"

    cycles: int = Field(default=3, ge=1, le=1000, description="RAFT cycles.")
    epochs: float = Field(default=1.0, gt=0, le=100, description="SFT passes over each cycle's kept samples.")
    prompts_per_cycle: int | None = Field(
        default=None, ge=1,
        description="Prompts sampled per cycle (a seeded subset of the curriculum's choice). Default: all of them.",
    )
    reward_threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Keep samples whose total reward is at least this (shaping's target)."
    )
    keep_top_fraction: float = Field(
        default=0.5, gt=0.0, le=1.0,
        description="Of the eligible samples, keep this top fraction by reward (shaping's target; at least one).",
    )
    require_success: bool = Field(
        default=True, description="Only samples every verifier marked successful are eligible."
    )
    allow_compile_only: bool = Field(
        default=False,
        description="Accept samples whose best possible reward was compile-only (e.g. mingw, code without a main).",
    )
    dedupe: bool = Field(default=True, description="Keep one copy of identical completions of the same prompt.")
    max_kept_per_prompt: int | None = Field(
        default=None, ge=1, description="Keep at most this many samples per prompt (diversity across prompts)."
    )
    lr_decay: float = Field(
        default=0.85, gt=0.0, le=1.0, description="Learning rate of cycle k = learning_rate x lr_decay^(k-1)."
    )
    curriculum: CurriculumSpec = Field(default_factory=CurriculumSpec, description="Which prompts each cycle uses.")
    shaping: ShapingSpec = Field(default_factory=ShapingSpec, description="How strict each cycle's selection is.")

    def data_refs(self) -> list[tuple[str, str]]:
        stats = self.curriculum.historical_stats
        return super().data_refs() + ([("curriculum.historical_stats", stats)] if stats else [])

    @model_validator(mode="after")
    def _check_raft(self) -> RAFTSpec:
        if self.max_steps is not None:
            raise ValueError("max_steps does not apply to RAFT: set cycles (each trains 'epochs' over its kept samples)")
        if self.num_processes > 1:
            raise ValueError("RAFT runs in one process (generation and verification are batched): set num_processes=1")
        if self.probe is not None and not self.probe.every_cycle:
            raise ValueError("probe: RAFT probes each cycle's policy; set probe.every_cycle=true (every_n_steps "
                             "applies to step-based methods)")
        return self


#: RL method tokens -> spec classes (all methods together: :data:`halo_schemas.methods.TRAINING_JOB_SPECS`).
RL_JOB_SPECS: dict[str, type[TrainSpecBase]] = {"grpo": GRPOSpec, "raft": RAFTSpec}
