"""Hyperparameter sweeps: a search space over any training spec, an objective, a sampler and a pruner.

A user writes a :class:`SweepSpec` (``halo-forge sweep create sweep.yaml`` or ``POST /api/v1/sweeps``)::

    name: lr-and-rank
    method: sft
    base: {model: tiny://llama, data: {train: chat.jsonl}, max_steps: 60}
    search_space:
      learning_rate: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}
      lora.rank: {type: int, low: 2, high: 16}
    objective: {metric: loss, mode: final, direction: minimize}
    sampler: tpe
    n_trials: 8
    pruning: {kind: median, warmup_steps: 5}

Each trial is an ordinary training job (``base`` with the sampled values set at their dotted paths);
the sweeps service coordinates them as one durable job (``halo.job.sweeps.sweep``, spec
:class:`SweepJobSpec`). The RPC models below answer ``create | list | show | cancel | resume | best | fork-best``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from halo_schemas.base import Message, UserInput
from halo_schemas.jobs import JobSpecBase, JobState

SamplerKind = Literal["random", "tpe", "grid"]
PrunerKind = Literal["none", "median", "asha"]
ParamType = Literal["float", "int", "categorical"]


class SearchParam(UserInput):
    """One dimension of the search space: a float or int range (optionally log-scaled) or a list of choices."""

    schema_id = "halo.spec.sweep-param.v1"

    type: ParamType = Field(description="float | int | categorical.")
    low: float | None = Field(default=None, description="Lower bound (float and int; inclusive).")
    high: float | None = Field(default=None, description="Upper bound (float and int; inclusive, > low).")
    log: bool = Field(default=False, description="Sample on a log scale (float and int; needs low > 0).")
    step: float | None = Field(
        default=None, gt=0, description="Grid spacing (float and int; not with log). Required for a float under the "
        "grid sampler; an int steps by 1 unless set.")
    choices: list[Any] | None = Field(
        default=None, description="The values to choose from (categorical): strings, numbers, booleans or null.")

    @model_validator(mode="after")
    def _check(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("choices: a categorical parameter needs at least one choice")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical parameter takes only choices (no low/high/log/step)")
            if any(c is not None and not isinstance(c, (str, int, float, bool)) for c in self.choices):
                raise ValueError("choices: each choice must be a string, number, boolean or null")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError("choices: a choice is listed twice")
            return self
        if self.choices is not None:
            raise ValueError(f"choices: only a categorical parameter has choices (this one is {self.type})")
        if self.low is None or self.high is None:
            raise ValueError(f"low and high are required for a {self.type} parameter")
        if not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"low: a log-scaled range needs low > 0 (got {self.low:g})")
        if self.log and self.step is not None:
            raise ValueError("step: a log-scaled range has no step")
        if self.type == "int":
            for name in ("low", "high", "step"):
                value = getattr(self, name)
                if value is not None and float(value) != int(value):
                    raise ValueError(f"{name}: an int parameter needs a whole number (got {value:g})")
        return self


#: Prefix of an objective scored by the eval service: ``eval:<task>`` or ``eval:<task>:<metric>``.
EVAL_PREFIX = "eval:"


class EvalObjectiveOptions(UserInput):
    """How each finished trial is evaluated when the objective is ``eval:<task>[:<metric>]``: one lm-eval job on
    the eval service over the trial's run (``run:<id>``, its adapter over its base)."""

    schema_id = "halo.spec.sweep-objective-eval.v1"

    limit: float | None = Field(default=100, gt=0, description="Documents of the task per evaluation (an integer, "
                                "or a fraction < 1; None: the whole task).")
    num_fewshot: int | None = Field(default=None, ge=0, le=64, description="Few-shot examples (default: the task's).")
    batch_size: int = Field(default=8, ge=1, le=1024, description="lm-eval batch size.")
    apply_chat_template: bool = Field(default=False, description="Format prompts with the model's chat template.")


class ObjectiveSpec(UserInput):
    """What a trial is scored by: a metric the trainer reports in its run events, or an eval task's metric."""

    schema_id = "halo.spec.sweep-objective.v1"

    metric: str = Field(
        default="loss", min_length=1,
        description="A run-event metric of the method (docs/metrics.md): loss, eval_loss (needs eval data), "
        "reward_accuracy (dpo), reward_mean / pass_rate (grpo, raft: the verifier reward)... or "
        "eval:<task>[:<metric>]: an lm-eval task's metric (default: its primary metric) on the trial's trained "
        "model, from an eval-service job run after the trial (e.g. eval:halo_arith_mc:acc).")
    mode: Literal["final", "best"] = Field(
        default="final", description="final: the last reported value; best: the best value over the run (run-event "
        "metrics; an eval objective has one value per trial).")
    direction: Literal["minimize", "maximize"] = Field(default="minimize", description="minimize | maximize.")
    eval: EvalObjectiveOptions | None = Field(
        default=None, description="Options of the evaluation behind an eval:<task> objective (default: limit 100).")

    @field_validator("metric")
    @classmethod
    def _eval_metric(cls, metric: str) -> str:
        if metric.startswith(EVAL_PREFIX):
            parts = metric.split(":", 2)
            if not parts[1].strip() or (len(parts) == 3 and not parts[2].strip()):
                raise ValueError(f"{metric!r}: an eval objective is eval:<task> or eval:<task>:<metric>")
        return metric

    @model_validator(mode="after")
    def _eval_options(self) -> ObjectiveSpec:
        if self.eval is not None and not self.metric.startswith(EVAL_PREFIX):
            raise ValueError("eval: evaluation options need an eval:<task>[:<metric>] objective metric")
        return self


class PruningSpec(UserInput):
    """Early stopping of unpromising trials on the objective's intermediate values (``none | median | asha``)."""

    schema_id = "halo.spec.sweep-pruning.v1"

    kind: PrunerKind = Field(default="none", description="none | median (Optuna MedianPruner) | asha "
                             "(Optuna SuccessiveHalvingPruner).")
    startup_trials: int = Field(default=2, ge=0, description="median: trials that finish before any is pruned.")
    warmup_steps: int = Field(default=5, ge=0, description="median: steps a trial runs before it may be pruned.")
    min_resource: int = Field(default=5, ge=1, description="asha: steps before the first rung.")
    reduction_factor: int = Field(default=3, ge=2, description="asha: 1/reduction_factor of trials reach each next "
                                  "rung.")


class SweepSpec(UserInput):
    """A sweep: the base spec of one training method, the space searched over it, the objective and the budget."""

    schema_id = "halo.spec.sweep.v1"

    name: str | None = Field(default=None, max_length=200, description="Human-readable name of the sweep.")
    method: str = Field(min_length=1, description="Training method of every trial: sft, dpo, orpo, rm, grpo, raft.")
    base: dict[str, Any] = Field(
        description="The method's spec every trial starts from (as for `halo-forge train <method> --config`); its "
        "backend (torch | mlx | auto) picks the trainer.")
    search_space: dict[str, SearchParam] = Field(
        min_length=1, description="Dotted spec path (learning_rate, lora.rank, beta, loss_type...) -> its range or "
        "choices. Each path must be a field of the method's spec.")
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec, description="The metric trials are scored by.")
    sampler: SamplerKind = Field(default="tpe", description="random | tpe | grid (grid: every combination once; "
                                 "n_trials is capped at the grid size).")
    n_trials: int = Field(default=8, ge=1, le=10000, description="Trials to run (finished, pruned and failed count).")
    parallel_trials: int = Field(
        default=1, ge=1, le=64,
        description="Trials running at once. At most the host's trial slots (its accelerator devices; 1 on a single "
        "device or on CPU) unless oversubscribe is set.")
    oversubscribe: bool = Field(
        default=False, description="Allow parallel_trials above the host's trial slots: trials then share a device "
        "(slower each, and may run out of memory).")
    pruning: PruningSpec = Field(default_factory=PruningSpec, description="Early stopping of unpromising trials.")
    seed: int = Field(default=42, ge=0, description="Seed of the sampler (trials keep the base spec's seed).")
    tags: list[str] = Field(default_factory=list, description="Tags added to every trial run (besides sweep:<id>).")


class SweepJobSpec(JobSpecBase):
    """The coordinator job (``halo.job.sweeps.sweep``): which sweep to drive. Written by the sweeps service."""

    schema_id = "halo.spec.sweep-job.v1"

    sweep_id: str = Field(min_length=1, max_length=128, description="Sweep id (sweep-...); the Optuna study name.")
    sweep: SweepSpec = Field(description="The sweep, as created.")


# ---- RPC models ----------------------------------------------------------------------------------
class SweepCreateRequest(Message):
    """Create a sweep and start its coordinator."""

    schema_id = "halo.rpc.sweep-create-request.v1"

    spec: dict[str, Any] = Field(description="A SweepSpec as JSON (validated by the service, errors name the field).")


class SweepStarted(Message):
    """Reply to create and resume: the sweep and its coordinator job."""

    schema_id = "halo.rpc.sweep-started.v1"

    sweep_id: str = Field(description="Sweep id (sweep-...).")
    job_id: str = Field(description="The coordinator job (follow it with `halo-forge jobs show`).")
    run_id: str = Field(description="The coordinator's run (its events: trials done, best value).")
    n_trials: int = Field(description="Trials the sweep runs in all (grid: capped at the grid size).")


class SweepRef(Message):
    """One sweep by id."""

    schema_id = "halo.rpc.sweep-ref.v1"

    sweep_id: str = Field(description="Sweep id (sweep-...).")


class SweepListRequest(Message):
    """List sweeps, newest first."""

    schema_id = "halo.rpc.sweep-list-request.v1"

    limit: int = Field(default=50, ge=1, le=1000, description="At most this many sweeps.")


class SweepTrial(Message):
    """One trial: its sampled values, its training job and run, and how it ended."""

    schema_id = "halo.sweeps.trial.v1"

    number: int = Field(description="Trial number (0-based, in the order trials were started).")
    state: Literal["running", "complete", "pruned", "failed", "waiting"] = Field(
        description="running | complete | pruned | failed | waiting.")
    params: dict[str, Any] = Field(default_factory=dict, description="Spec path -> the value this trial used.")
    value: float | None = Field(default=None, description="Objective value (complete trials).")
    job_id: str | None = Field(default=None, description="The trial's training job.")
    run_id: str | None = Field(default=None, description="The trial's run in the registry.")
    last_step: int | None = Field(default=None, description="Last step with an intermediate objective value.")
    intermediate: dict[int, float] = Field(default_factory=dict, description="Step -> objective value reported.")
    error: str | None = Field(default=None, description="Why the trial failed.")


class SweepInfo(Message):
    """A sweep: spec, coordinator state, trials, the best trial and Optuna's parameter importances."""

    schema_id = "halo.sweeps.sweep.v1"

    sweep_id: str = Field(description="Sweep id (sweep-...).")
    name: str | None = Field(default=None, description="The sweep's name.")
    method: str = Field(description="Training method of the trials.")
    state: JobState | None = Field(default=None, description="State of the coordinator job (None: unknown).")
    job_id: str | None = Field(default=None, description="The current coordinator job.")
    error: str | None = Field(default=None, description="Why the coordinator failed, if it did.")
    spec: dict[str, Any] = Field(default_factory=dict, description="The SweepSpec as created.")
    n_trials: int = Field(description="Requested number of trials.")
    created_at: datetime | None = Field(default=None, description="UTC creation time.")
    counts: dict[str, int] = Field(default_factory=dict, description="Trials per state.")
    trials: list[SweepTrial] = Field(default_factory=list, description="Trials in order (empty in list replies).")
    best: SweepTrial | None = Field(default=None, description="The best complete trial so far.")
    importances: dict[str, float] = Field(
        default_factory=dict, description="Parameter -> importance (Optuna, fANOVA-free default evaluator); empty "
        "until two trials are complete.")


class SweepList(Message):
    """Sweeps, newest first (without their trials)."""

    schema_id = "halo.rpc.sweep-list.v1"

    sweeps: list[SweepInfo] = Field(description="Sweeps, newest first.")


class SweepBest(Message):
    """The best trial of a sweep and the full spec it trained with."""

    schema_id = "halo.rpc.sweep-best.v1"

    sweep_id: str = Field(description="Sweep id.")
    trial: SweepTrial = Field(description="The best complete trial.")
    method: str = Field(description="Training method.")
    spec: dict[str, Any] = Field(description="The trial's full training spec.")


class SweepForkRequest(Message):
    """Train a full run from the best trial's spec, with overrides (e.g. more steps)."""

    schema_id = "halo.rpc.sweep-fork-request.v1"

    sweep_id: str = Field(description="Sweep id.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted spec path -> value set on the best "
                                      "trial's spec, e.g. {'max_steps': 2000}.")
    name: str | None = Field(default=None, max_length=200, description="Name of the new run.")


class SweepForked(Message):
    """The full run started from the best trial."""

    schema_id = "halo.rpc.sweep-forked.v1"

    sweep_id: str = Field(description="Sweep id.")
    trial: int = Field(description="Number of the trial it was forked from.")
    job_id: str = Field(description="The new training job.")
    run_id: str = Field(description="The new run.")
    spec: dict[str, Any] = Field(description="The spec it trains with.")
