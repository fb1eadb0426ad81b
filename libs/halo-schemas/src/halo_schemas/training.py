"""Training job specs (SFT, DPO, ORPO, reward model), the dry-run preview and the training summary.

A spec is what a user writes (``halo-forge train sft --config spec.yaml`` or the JSON body of
``POST /api/v1/jobs/sft``). It is a :class:`~halo_schemas.base.UserInput`: an unknown key is an error
that names it, so ``lerning_rate: 1e-4`` never silently trains with the default. The gateway validates
a spec here before it enqueues a :class:`~halo_schemas.jobs.JobEnvelope` on
``halo.job.trainer-torch.<method>``; the trainer validates it again and resolves the ``auto`` values
for its backend (dtype, gradient checkpointing, attention kernel, learning rate).

Usage::

    spec = SFTSpec.model_validate({"model": "Qwen/Qwen2.5-0.5B", "data": {"train": "chat.jsonl"}})
    spec_cls = TRAINING_JOB_SPECS["dpo"]          # halo_schemas.methods: method token -> spec class

Every trainer writes ``training_summary.json`` with the one :class:`TrainingSummary` shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from halo_schemas.base import Message, UserInput, utcnow
from halo_schemas.eval import TrainingProbeSpec
from halo_schemas.jobs import JobSpecBase, JobState

FinetuneMode = Literal["full", "lora", "qlora", "dora", "rslora", "pissa"]
DataFormat = Literal["auto", "text", "prompt_completion", "messages", "preference", "alpaca", "sharegpt"]

#: Canonical record fields a ``data.columns`` mapping may point at other field names.
CANONICAL_COLUMNS = ("text", "prompt", "completion", "messages", "chosen", "rejected", "instruction", "input",
                     "output", "conversations", "system", "context", "complexity")
DpoLossType = Literal["sigmoid", "ipo", "hinge", "kto_pair", "rpo", "cdpo"]


class LoRASpec(UserInput):
    """Low-rank adapter settings, used when ``finetune`` is lora, qlora, dora, rslora or pissa."""

    schema_id = "halo.spec.lora.v1"

    rank: int = Field(default=16, ge=1, le=4096, description="Adapter rank r.")
    alpha: float | None = Field(
        default=None, gt=0, description="Scaling numerator (scale = alpha/r, or alpha/sqrt(r) for rsLoRA). Default: 2 x rank."
    )
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default="all-linear",
        description="Module names (or suffixes) to adapt, e.g. ['q_proj', 'v_proj'], or 'all-linear' for every "
        "linear layer except the output head.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Extra modules trained in full and saved with the adapter (a reward model's 'score' head is added "
        "automatically).",
    )


class DataSpec(UserInput):
    """Where the training (and evaluation) records come from and which format they are in."""

    schema_id = "halo.spec.data.v1"

    train: str = Field(
        min_length=1,
        description="A local .jsonl / .json / .parquet file, or a Hugging Face Hub dataset id (split taken from 'split').",
    )
    eval: str | None = Field(default=None, description="Optional held-out file or Hub id in the same format.")
    split: str = Field(default="train", description="Split of a Hub dataset used for training.")
    eval_split: str | None = Field(default=None, description="Split of the Hub dataset used for evaluation, if any.")
    eval_fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Fraction of the training records held out for evaluation when no 'eval' is given."
    )
    format: DataFormat = Field(
        default="auto",
        description="Record format: text {'text'}, prompt_completion {'prompt','completion'}, messages {'messages'}, "
        "preference {'chosen','rejected'[,'prompt']}, alpaca {'instruction'[,'input'],'output'} (trained as "
        "prompt_completion), sharegpt {'conversations': [{'from': human|gpt|system, 'value'}]} (trained as "
        "messages). 'auto' detects it from the first record (after 'columns' is applied).",
    )
    text_field: str = Field(default="text", min_length=1, description="Column holding plain text in the 'text' format.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical field -> the field your records use, e.g. {'prompt': 'question', 'completion': "
        "'answer'}; applied to every record before the format is detected. Canonical fields: "
        + ", ".join(CANONICAL_COLUMNS) + ".",
    )

    @model_validator(mode="after")
    def _check_columns(self) -> DataSpec:
        unknown = sorted(set(self.columns) - set(CANONICAL_COLUMNS))
        if unknown:
            raise ValueError(f"columns: unknown canonical field(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(CANONICAL_COLUMNS)}")
        sources = [v for v in self.columns.values()]
        if any(not v for v in sources):
            raise ValueError("columns: a source field name is empty")
        if len(set(sources)) != len(sources):
            raise ValueError("columns: two canonical fields map to the same source field")
        if "text" in self.columns and self.text_field != "text":
            raise ValueError("set either text_field or columns.text, not both")
        return self

    def local_files(self) -> list[tuple[str, str]]:
        """``(param, value)`` of every data location in this spec (Hub ids included; callers tell them apart)."""
        out = [("data.train", self.train)]
        if self.eval is not None:
            out.append(("data.eval", self.eval))
        return out
    max_samples: int | None = Field(default=None, ge=1, description="Use at most this many training records (for quick runs).")


class EarlyStoppingSpec(UserInput):
    """Stop when the evaluation loss has not improved for ``patience`` evaluations."""

    schema_id = "halo.spec.early-stopping.v1"

    patience: int = Field(default=3, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(default=0.0, ge=0.0, description="Smallest decrease of eval loss that counts as improvement.")


class TrainSpecBase(JobSpecBase):
    """Fields every torch training recipe shares. Concrete specs add their method's options.

    ``None`` / ``"auto"`` values are resolved by the trainer for the backend it runs on; the resolved
    values are recorded in the run's ``replay.json``.
    """

    model: str = Field(min_length=1, description="Base model: a Hugging Face Hub id or a local directory in HF format.")
    backend: Literal["auto", "torch", "mlx"] = Field(
        default="auto", description="Trainer that runs the job: torch (trainer-torch: CUDA, ROCm, MPS, CPU), mlx "
        "(trainer-mlx: Apple silicon, MLX's CPU build elsewhere), or auto: the trainer this host serves.")
    data: DataSpec = Field(description="Training data (and optional evaluation data).")
    finetune: FinetuneMode = Field(
        default="lora",
        description="full: every weight; lora; qlora: LoRA on a 4-bit base (bitsandbytes, CUDA/ROCm only); dora: "
        "weight-decomposed LoRA; rslora: rank-stabilised scaling; pissa: LoRA initialised from principal singular vectors.",
    )
    lora: LoRASpec = Field(default_factory=LoRASpec, description="Adapter settings (ignored for finetune=full).")
    epochs: float = Field(default=1.0, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(default=None, ge=1, description="Optimizer steps to run; overrides epochs.")
    batch_size: int = Field(
        default=8, ge=1, description="Sequences (SFT with packing: packed rows) per device per micro-batch."
    )
    grad_accum: int = Field(default=1, ge=1, description="Micro-batches accumulated per optimizer step.")
    learning_rate: float | None = Field(
        default=None, gt=0, description="Peak learning rate. Default: 2e-5 for full finetuning, 2e-4 for adapters."
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="cosine", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(default=0.03, ge=0.0, lt=1.0, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm.")
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "adafactor", "sgd"] = Field(
        default="adamw_torch", description="Optimizer (transformers name)."
    )
    max_length: int = Field(default=1024, ge=8, description="Longest sequence in tokens; longer records are truncated.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Compute dtype. auto: bfloat16 on CUDA/ROCm with bf16 support (else float16), "
        "bfloat16 on MPS where supported, and on CPUs with native bf16 (AMX / AVX512-BF16); float32 otherwise."
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        default="auto", description="Attention kernel. auto: flash_attention_2 where installed, else sdpa."
    )
    gradient_checkpointing: bool | None = Field(
        default=None, description="Recompute activations to save memory. Default: on for CUDA/ROCm/MPS, off on CPU."
    )
    torch_compile: bool = Field(
        default=False, description="trainer-torch: compile the model with torch.compile (inductor). The first "
        "steps pay for the compile, later steps run faster. Measured on 2 CPU cores with a 25M model: SFT 1.05-1.13x "
        "per step after ~35 s of compiling, DPO 1.08x after ~3 min (docs/performance.md): worth it for long runs "
        "only. Not for GRPO/RAFT. trainer-mlx always compiles its step (mx.compile) and ignores this.")
    eval_every_steps: int | None = Field(
        default=None, ge=1, description="Evaluate every N steps (needs eval data). Default: at each checkpoint."
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        default=None, description="Stop early on eval loss (needs eval data or eval_fraction > 0)."
    )
    probe: TrainingProbeSpec | None = Field(
        default=None, description="Evaluate the current weights during training (a job on the eval service); "
        "on_regression=stop ends the run at the last checkpoint that passed."
    )
    checkpoint_every_steps: int = Field(default=100, ge=1, description="Write a resumable checkpoint every N optimizer steps.")
    keep_checkpoints: int = Field(default=2, ge=1, description="How many of the newest checkpoints to keep.")
    log_every_steps: int = Field(default=1, ge=1, description="Write a metrics.jsonl line every N steps.")
    progress_interval_s: float = Field(
        default=1.0, ge=0.0, description="Minimum seconds between progress events on the bus (the last step is always sent)."
    )
    num_processes: int = Field(
        default=1, ge=1, le=1024, description="Data-parallel processes; > 1 launches through accelerate."
    )
    distributed: Literal["ddp", "fsdp", "deepspeed"] = Field(
        default="ddp", description="Strategy when num_processes > 1 (the accelerate config is generated from it)."
    )
    deepspeed_stage: Literal[1, 2, 3] = Field(default=2, description="ZeRO stage when distributed=deepspeed.")
    merge_adapter: bool = Field(
        default=False, description="Also write the adapter merged into the base model to final/ (adapter runs only)."
    )
    sample_prompts: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="User prompts answered (greedy) before and after training; stored in the summary for comparison.",
    )
    sample_max_new_tokens: int = Field(default=32, ge=1, le=4096, description="Tokens generated per sample prompt.")
    trust_remote_code: bool = Field(
        default=False,
        description="Run Python code shipped with the model (config auto_map). Refused unless the host sets "
        "HALO_ALLOW_REMOTE_CODE=1, and always refused for a model or adapter inside an imported bundle.",
    )

    def code_requests(self) -> list[str]:
        """Fields of this spec that ask a worker to import or run code (names as in error ``param``).
        Such a spec only runs where the operator allowed it (``HALO_ALLOW_REMOTE_CODE``)."""
        return ["trust_remote_code"] if self.trust_remote_code else []

    def model_refs(self) -> list[tuple[str, str]]:
        """``(param, value)`` of every model this spec loads: Hub ids, local directories or ``tiny://``."""
        return [("model", self.model)]

    def data_refs(self) -> list[tuple[str, str]]:
        """``(param, value)`` of every data location this spec reads: files, Hub dataset ids, ``demo://``."""
        return self.data.local_files()

    @model_validator(mode="after")
    def _check_common(self) -> TrainSpecBase:
        if self.early_stopping is not None and self.data.eval is None and self.data.eval_fraction == 0.0:
            raise ValueError("early_stopping needs evaluation data: set data.eval or data.eval_fraction")
        if self.merge_adapter and self.finetune == "full":
            raise ValueError("merge_adapter only applies to adapter finetuning (finetune != 'full')")
        return self


class SFTSpec(TrainSpecBase):
    """Supervised finetuning on text, prompt/completion or chat (messages) records."""

    schema_id = "halo.spec.sft.v1"

    packing: bool = Field(
        default=True,
        description="Pack several records into each row (best-fit decreasing) with per-record position ids, so no "
        "compute is spent on padding and records never attend to each other.",
    )
    completion_only_loss: bool = Field(
        default=True,
        description="Train only on completions: assistant tokens of chat records (from the chat template), the "
        "completion of prompt/completion records. Plain text is always trained in full.",
    )


class PreferenceSpecBase(TrainSpecBase):
    """Options every pairwise preference objective (DPO, ORPO) shares."""

    disable_dropout: bool = Field(
        default=True, description="Train with every dropout off (the adapter's included), as TRL does for preference "
        "objectives: the loss compares log-probs of the policy in training mode with a reference (or the other "
        "completion), and dropout would make that difference noise. It is also a large part of a CPU step.")
    share_prompt: bool = Field(
        default=True, description="Run each pair's prompt once: chosen and rejected both attend to one copy of it "
        "and pairs are packed without padding. The log-probs are those of padded batches; the step does less work "
        "(1.3-1.6x faster on CPU). Needs sdpa or eager attention without a sliding window shorter than max_length; "
        "otherwise, and on trainer-mlx, batches are padded (the run's summary says which: batch_layout).")


class DPOSpec(PreferenceSpecBase):
    """Direct preference optimisation on chosen/rejected pairs."""

    schema_id = "halo.spec.dpo.v1"

    loss_type: DpoLossType = Field(
        default="sigmoid",
        description="sigmoid (DPO), ipo, hinge (SLiC), kto_pair, rpo (DPO + rpo_alpha x NLL on chosen), "
        "cdpo (conservative DPO: sigmoid with label_smoothing).",
    )
    beta: float = Field(default=0.1, gt=0, description="Inverse temperature; for ipo the regulariser tau.")
    label_smoothing: float = Field(
        default=0.0, ge=0.0, lt=0.5, description="Probability that a preference label is flipped (cdpo; > 0 required there)."
    )
    rpo_alpha: float = Field(default=1.0, ge=0.0, description="Weight of the NLL term for loss_type=rpo.")
    reference_free: bool = Field(
        default=False, description="Compare against a uniform reference (log-probs 0) instead of a frozen reference model."
    )
    ref_model: str | None = Field(
        default=None,
        description="Reference model id or path. Default: the base model (adapters: the base with the adapter disabled).",
    )
    precompute_ref_log_probs: bool = Field(
        default=False, description="Compute the reference log-probs once, in a pass over the data before training, "
        "instead of a reference forward every step (TRL's option of the same name): E epochs run one reference "
        "pass instead of E, and a separate reference model (full finetuning, PiSSA, ref_model) is released before "
        "training starts. For a single epoch the pass costs what the per-step forwards cost.")

    def model_refs(self) -> list[tuple[str, str]]:
        return super().model_refs() + ([("ref_model", self.ref_model)] if self.ref_model else [])

    @model_validator(mode="after")
    def _check_dpo(self) -> DPOSpec:
        if self.loss_type == "cdpo" and self.label_smoothing <= 0.0:
            raise ValueError("loss_type 'cdpo' needs label_smoothing > 0 (e.g. 0.1)")
        if self.reference_free and self.ref_model is not None:
            raise ValueError("reference_free and ref_model are mutually exclusive")
        if self.reference_free and self.precompute_ref_log_probs:
            raise ValueError("precompute_ref_log_probs needs a reference model; reference_free has none")
        return self


class ORPOSpec(PreferenceSpecBase):
    """Odds-ratio preference optimisation: SFT on chosen plus an odds-ratio penalty, no reference model."""

    schema_id = "halo.spec.orpo.v1"

    beta: float = Field(default=0.1, gt=0, description="Weight lambda of the odds-ratio term.")


class RewardModelSpec(TrainSpecBase):
    """Bradley-Terry reward model on a sequence-classification head, trained from chosen/rejected pairs."""

    schema_id = "halo.spec.rm.v1"

    center_rewards_coefficient: float | None = Field(
        default=0.01,
        ge=0.0,
        description="Weight of the reward-centering penalty mean((r_chosen + r_rejected)^2); null disables it.",
    )


#: Supervised and preference methods: method token (the job type, ``halo.job.<trainer>.<method>``) -> spec class.
#: Every method, RL included, is :data:`halo_schemas.methods.TRAINING_JOB_SPECS`.
SUPERVISED_JOB_SPECS: dict[str, type[TrainSpecBase]] = {
    "sft": SFTSpec,
    "dpo": DPOSpec,
    "orpo": ORPOSpec,
    "rm": RewardModelSpec,
}


class TokenSegment(Message):
    """A run of consecutive tokens that are all trained or all masked."""

    schema_id = "halo.rpc.token-segment.v1"

    text: str = Field(description="Decoded text of the tokens.")
    trained: bool = Field(description="True when these tokens contribute to the loss.")
    num_tokens: int = Field(ge=0, description="Number of tokens in the run.")


class RenderedSample(Message):
    """One record as the trainer will see it: template applied, tokenized, masked."""

    schema_id = "halo.rpc.rendered-sample.v1"

    source: str = Field(description="Where the record comes from, e.g. 'data.jsonl:3'.")
    part: str = Field(default="input", description="'input', or 'chosen' / 'rejected' for preference records.")
    segments: list[TokenSegment] = Field(description="Trained and masked runs, in order.")
    num_tokens: int = Field(ge=0, description="Tokens after truncation.")
    num_trained_tokens: int = Field(ge=0, description="Tokens that contribute to the loss.")
    truncated: bool = Field(default=False, description="True when the record was cut to max_length.")


class PreviewRequest(Message):
    """Ask a trainer to validate a spec and its data and render samples, without training (dry run)."""

    schema_id = "halo.rpc.training-preview-request.v1"

    method: str = Field(description="Method token: sft, dpo, orpo, rm.")
    spec: dict[str, Any] = Field(description="The job spec (validated by the trainer).")
    num_samples: int = Field(default=1, ge=1, le=20, description="How many records to render.")


class PreviewResult(Message):
    """What a dry run found: format, record counts, problems and rendered samples."""

    schema_id = "halo.rpc.training-preview-result.v1"

    ok: bool = Field(description="True when the spec and data are valid for training on this backend.")
    method: str = Field(description="Method token.")
    format: str | None = Field(default=None, description="Detected record format.")
    records: int = Field(default=0, ge=0, description="Valid training records.")
    eval_records: int = Field(default=0, ge=0, description="Valid evaluation records.")
    problems: list[str] = Field(default_factory=list, description="Every problem found, each naming file:line and field.")
    samples: list[RenderedSample] = Field(default_factory=list, description="Rendered records.")
    backend: str | None = Field(default=None, description="Backend the trainer would use.")
    resolved: dict[str, Any] = Field(default_factory=dict, description="The auto settings as resolved for this backend.")


class TrainingSummary(Message):
    """``training_summary.json``: one shape for every trainer (torch, mlx), success or failure."""

    schema_id = "halo.run.training-summary.v1"

    run_id: str = Field(description="Run id.")
    job_id: str | None = Field(default=None, description="Job id.")
    method: str = Field(description="sft, dpo, orpo, rm, grpo, ...")
    service: str = Field(description="Trainer service that produced the run.")
    state: JobState = Field(description="succeeded | failed | cancelled.")
    base_model: str | None = Field(default=None, description="Base model id or path.")
    finetune: str | None = Field(default=None, description="full, lora, qlora, dora, rslora, pissa.")
    backend: str | None = Field(default=None, description="Backend it ran on.")
    steps: int = Field(default=0, ge=0, description="Optimizer steps completed.")
    total_steps: int | None = Field(default=None, description="Planned optimizer steps.")
    epochs: float | None = Field(default=None, description="Epochs completed (fractional).")
    loss_first: float | None = Field(default=None, description="First logged training loss.")
    loss_last: float | None = Field(default=None, description="Last logged training loss.")
    loss_best: float | None = Field(default=None, description="Lowest logged training loss.")
    eval_loss_best: float | None = Field(default=None, description="Lowest evaluation loss, when evaluated.")
    tokens: int = Field(default=0, ge=0, description="Non-padding tokens processed in training.")
    tokens_per_second: float | None = Field(
        default=None, description="Training-loop throughput of the last attempt (non-padding tokens/s; loading, "
        "evaluation at the end and export excluded)."
    )
    duration_s: float = Field(default=0.0, ge=0, description="Wall time of this run, all attempts together.")
    weights_updated: bool = Field(default=False, description="True when at least one optimizer step changed the weights.")
    failure_reason: str | None = Field(default=None, description="Why it failed or was cancelled.")
    resumed_from_step: int | None = Field(default=None, description="Checkpoint step the last attempt resumed from.")
    attempts: int = Field(default=1, ge=1, description="How many times a worker started the job.")
    trainable_parameters: int | None = Field(default=None, description="Parameters updated by the optimizer.")
    total_parameters: int | None = Field(default=None, description="All model parameters.")
    model_flops_per_token: float | None = Field(
        default=None, description="Model FLOPs per trained token of a training step (6N + attention for full "
        "finetuning, 4N + 6A + attention for adapters, plus any reference forward; halo_training.flops)."
    )
    model_flops_per_second: float | None = Field(
        default=None, description="Achieved model FLOPs/s of the last attempt's training loop (model_flops_per_token "
        "x tokens / seconds)."
    )
    peak_flops_per_second: float | None = Field(
        default=None, description="Peak FLOP/s of the device in the training dtype: a datasheet table for GPUs, a "
        "measured dense matmul for CPUs and unknown devices (per device, all ranks together)."
    )
    peak_flops_source: str | None = Field(
        default=None, description="Where the peak came from: 'table:<device>' or 'measured:<dtype> matmul'."
    )
    mfu: float | None = Field(
        default=None, description="Model FLOPs utilisation: model_flops_per_second / peak_flops_per_second."
    )
    outputs: dict[str, str] = Field(default_factory=dict, description="Artifact name -> path (adapter, final, ...).")
    extras: dict[str, Any] = Field(default_factory=dict, description="Method-specific results (reward accuracy, samples, ...).")
    started_at: datetime | None = Field(default=None, description="UTC start of the first attempt.")
    finished_at: datetime = Field(default_factory=utcnow, description="UTC end.")
