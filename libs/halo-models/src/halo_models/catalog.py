"""Catalog of real base models with per-backend notes and finetuning defaults.

The catalog is data (``halo_models/data/catalog.json``) validated by strict pydantic models, so a
typo in the file fails :func:`load_catalog` with a message naming the field. Use it like::

    from halo_models.catalog import find, load_catalog, recommend

    for entry in load_catalog().models:                  # `halo-forge models list`
        print(entry.id, entry.params_b, entry.license)

    entry = find("Qwen/Qwen2.5-1.5B-Instruct")          # UnknownModelError if absent
    rec = recommend("Qwen/Qwen2.5-7B-Instruct", "cuda", memory_gb=24)
    rec.method, rec.per_device_batch_size, rec.learning_rate   # ('lora', 1, 0.0001) or similar

Nothing here imports torch or transformers; listing the catalog is instant.

The memory figures in :func:`estimate_memory_gb` are a deliberately simple model (weights +
LoRA optimizer state + activations with or without gradient checkpointing + fp32 logits), good
enough to pick a method, batch size and sequence length that start without running out of
memory; they are not a promise. Accelerator-specific truths (what is supported where) live in the
catalog's per-backend notes and in the constants below.
"""

from __future__ import annotations

import difflib
import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "BACKENDS",
    "EFFECTIVE_BATCH_SIZE",
    "QLORA_BACKENDS",
    "Backend",
    "BackendNote",
    "BackendNotes",
    "Catalog",
    "CatalogEntry",
    "CatalogError",
    "InsufficientMemoryError",
    "Method",
    "Recommendation",
    "TrainingDefaults",
    "UnknownModelError",
    "UnsupportedBackendError",
    "auto_dtype",
    "catalog_json_schema",
    "catalog_path",
    "estimate_memory_gb",
    "find",
    "load_catalog",
    "recommend",
    "trainer_defaults",
]

Backend = Literal["cuda", "rocm", "mps", "mlx", "cpu"]
#: Every backend Halo Forge knows, in display order. Each catalog entry has a note for each.
BACKENDS: tuple[Backend, ...] = get_args(Backend)
Method = Literal["lora", "qlora"]
Dtype = Literal["bfloat16", "float32"]

#: Backends where :func:`recommend` may pick QLoRA: bitsandbytes 4-bit on CUDA, and MLX, whose
#: LoRA on a quantized model (``mlx_lm.convert -q``) is QLoRA. ROCm bitsandbytes builds exist
#: but are not dependable enough to choose automatically; MPS and CPU have no 4-bit path.
QLORA_BACKENDS: frozenset[str] = frozenset({"cuda", "mlx"})
#: Target effective batch size (per-device batch x gradient accumulation) of a recommendation.
EFFECTIVE_BATCH_SIZE = 16
#: Largest per-device batch size :func:`recommend` proposes.
MAX_BATCH_SIZE = 16
#: Shortest sequence length :func:`recommend` falls back to before giving up.
MIN_SEQ_LEN = 256

# Apple silicon shares memory with the CPU, and macOS lets the GPU wire only about 75% of it by
# default (iogpu.wired_limit_mb); the rest stays with the OS and the Python process.
_UNIFIED_MEMORY_FRACTION = 0.75
# Fixed cost before any weights: CUDA/HIP context, allocator slack, framework buffers (GiB).
_FIXED_OVERHEAD_GB: dict[str, float] = {"cuda": 1.0, "rocm": 1.0, "mps": 0.5, "mlx": 0.5, "cpu": 0.5}
# Leave this fraction of the budget free: fragmentation and peaks the estimate does not see.
_HEADROOM = 0.9
_GIB = 2**30


class _Strict(BaseModel):
    # A typo in catalog.json must fail loudly instead of being silently dropped.
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendNote(_Strict):
    """Whether, and how well, one backend can finetune a model."""

    supported: bool = Field(description="True if Halo Forge can finetune this model on this backend.")
    note: str = Field(min_length=1, description="One or two sentences for a human: caveats, flags, expectations.")


class BackendNotes(_Strict):
    """One :class:`BackendNote` per backend; all five are required."""

    cuda: BackendNote = Field(description="NVIDIA GPUs via PyTorch CUDA.")
    rocm: BackendNote = Field(description="AMD GPUs via PyTorch ROCm (HIP).")
    mps: BackendNote = Field(description="Apple GPUs via PyTorch's Metal (MPS) backend.")
    mlx: BackendNote = Field(description="Apple silicon via MLX / mlx-lm.")
    cpu: BackendNote = Field(description="Plain CPU PyTorch (smoke tests and very small models).")

    def get(self, backend: Backend) -> BackendNote:
        """The note for ``backend`` (one of :data:`BACKENDS`)."""
        note: BackendNote = getattr(self, backend)
        return note


class TrainingDefaults(_Strict):
    """Starting hyper-parameters for LoRA/QLoRA SFT of this model."""

    lora_rank: int = Field(ge=1, le=256, description="LoRA rank r.")
    lora_alpha: int = Field(ge=1, description="LoRA scaling alpha (commonly 2 x rank).")
    learning_rate: float = Field(gt=0, le=1e-2, description="Peak learning rate for the adapter.")
    max_seq_len: int = Field(ge=MIN_SEQ_LEN, description="Default training sequence length in tokens.")


class CatalogEntry(_Strict):
    """One real base model: identity, size, licensing, backend notes and training defaults."""

    id: str = Field(
        pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", description="Hugging Face Hub repository id, 'owner/name'."
    )
    family: str = Field(min_length=1, description="Model family, e.g. 'qwen2.5', 'llama-3.2', 'gemma-2'.")
    architecture: str = Field(
        pattern=r"^\w+For\w+$", description="transformers class named in config.json, e.g. 'Qwen2ForCausalLM'."
    )
    weights_format: Literal["hf", "mlx"] = Field(
        description="'hf': transformers safetensors (usable everywhere); 'mlx': MLX-converted weights (MLX only)."
    )
    quantized_bits: Literal[4, 8] | None = Field(
        None, description="Bits of pre-quantized weights (e.g. mlx-community 4-bit conversions); null if not."
    )
    base_model: str | None = Field(
        None, description="For converted/quantized variants, the id of the original model; null otherwise."
    )
    params_b: float = Field(gt=0, description="Total parameters, in billions (embeddings included).")
    hidden_size: int = Field(gt=0, description="Model width; used for memory estimates.")
    num_layers: int = Field(gt=0, description="Number of decoder layers; used for memory estimates.")
    vocab_size: int = Field(
        gt=0, description="Vocabulary size (rows of the embedding); logits dominate memory for large vocabularies."
    )
    context_length: int = Field(gt=0, description="Maximum context the model was trained for, in tokens.")
    license: str = Field(
        min_length=1, description="License identifier as shown on the model card, e.g. 'apache-2.0', 'llama3.2'."
    )
    gated: bool = Field(description="True if the Hub requires accepting terms (and an HF token) before download.")
    chat_template: bool = Field(description="True if the tokenizer ships a chat template (instruct/chat models).")
    notes: str = Field(
        "", description="Model-wide caveats for a human (chat template quirks, special tokens, attention settings)."
    )
    backends: BackendNotes = Field(description="Per-backend support and caveats.")
    defaults: TrainingDefaults = Field(description="Recommended LoRA/QLoRA starting point.")

    @model_validator(mode="after")
    def _check_consistency(self) -> CatalogEntry:
        if self.weights_format == "mlx":
            if self.base_model is None:
                raise ValueError(f"{self.id}: MLX conversions must name their base_model")
            off_mlx = [b for b in BACKENDS if b != "mlx" and self.backends.get(b).supported]
            if off_mlx:
                raise ValueError(f"{self.id}: MLX weights cannot be supported on {off_mlx}")
        if self.defaults.max_seq_len > self.context_length:
            raise ValueError(f"{self.id}: defaults.max_seq_len exceeds context_length")
        return self


class Catalog(_Strict):
    """The whole catalog file."""

    version: int = Field(ge=1, description="Format version of catalog.json; bump on incompatible changes.")
    models: list[CatalogEntry] = Field(min_length=1, description="The models, in display order.")

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, models: list[CatalogEntry]) -> list[CatalogEntry]:
        # The Hub treats ids case-insensitively, so must we.
        seen: set[str] = set()
        for m in models:
            if m.id.lower() in seen:
                raise ValueError(f"duplicate model id {m.id!r}")
            seen.add(m.id.lower())
        return models

    def ids(self) -> list[str]:
        """All model ids, in catalog order."""
        return [m.id for m in self.models]

    def find(self, model_id: str) -> CatalogEntry:
        """The entry for ``model_id`` (exact, else case-insensitive match).

        Raises :class:`UnknownModelError`, whose message suggests close ids.
        """
        for m in self.models:
            if m.id == model_id:
                return m
        for m in self.models:
            if m.id.lower() == model_id.lower():
                return m
        raise UnknownModelError(model_id, self.ids())


class Recommendation(_Strict):
    """Finetuning settings proposed by :func:`recommend` for one model, backend and memory budget."""

    model_id: str = Field(description="Catalog id of the model.")
    backend: Backend = Field(description="Backend the settings are for.")
    memory_gb: float = Field(gt=0, description="Memory budget given to recommend(), in GiB.")
    method: Method = Field(description="'lora' on full-precision weights, or 'qlora' on 4-bit weights.")
    dtype: Dtype = Field(description="Compute dtype of the frozen base weights and activations.")
    lora_rank: int = Field(ge=1, description="LoRA rank r.")
    lora_alpha: int = Field(ge=1, description="LoRA alpha.")
    learning_rate: float = Field(gt=0, description="Peak learning rate.")
    max_seq_len: int = Field(
        ge=1, description="Training sequence length in tokens (may be below the catalog default to fit memory)."
    )
    per_device_batch_size: int = Field(ge=1, description="Micro-batch size per device.")
    gradient_accumulation_steps: int = Field(ge=1, description="Micro-batches per optimizer step.")
    gradient_checkpointing: bool = Field(description="Recompute activations in the backward pass to save memory.")
    estimated_memory_gb: float = Field(gt=0, description="Estimated peak memory of these settings, in GiB.")
    notes: list[str] = Field(description="Human-readable caveats: the backend note, gating, any compromise made.")


    def spec(self) -> dict[str, Any]:
        """These settings as training-spec keys (``halo_schemas.training.TrainSpecBase``: ``finetune``,
        ``lora.rank``/``lora.alpha``, ``learning_rate``, ``max_length``, ``batch_size``, ``grad_accum``,
        ``gradient_checkpointing``), ready to merge into a ``halo-forge train sft`` spec::

            spec = {"model": rec.model_id, "data": {"train": "chat.jsonl"}, **rec.spec()}

        ``dtype`` is left to the trainer's ``auto`` (see :func:`auto_dtype`), which never needs more memory
        than this estimate assumes."""
        return {
            "finetune": self.method,
            "lora": {"rank": self.lora_rank, "alpha": self.lora_alpha},
            "learning_rate": self.learning_rate,
            "max_length": self.max_seq_len,
            "batch_size": self.per_device_batch_size,
            "grad_accum": self.gradient_accumulation_steps,
            "gradient_checkpointing": self.gradient_checkpointing,
        }


def trainer_defaults(backend: Backend, *, finetune: str = "lora", lora_rank: int = 16) -> dict[str, Any]:
    """What trainer-torch uses for each key of :meth:`Recommendation.spec` when a spec leaves it out, on
    ``backend`` (the spec defaults of ``TrainSpecBase`` after the trainer resolves ``None``: learning rate 2e-4
    for adapters / 2e-5 for full finetuning, alpha 2 x rank, gradient checkpointing on except on CPU).

    ``halo-forge models recommend`` marks a recommended value that equals this as the trainer's default;
    a test checks these against trainer-torch's own resolution."""
    return {
        "finetune": "lora",
        "lora": {"rank": 16, "alpha": 2 * lora_rank},
        "learning_rate": 2e-5 if finetune == "full" else 2e-4,
        "max_length": 1024,
        "batch_size": 8,
        "grad_accum": 1,
        "gradient_checkpointing": backend != "cpu",
    }


def auto_dtype(backend: Backend) -> str:
    """What the trainer's ``dtype: auto`` resolves to on ``backend``, in words (it depends on the device)."""
    return {
        "cuda": "bfloat16 (float16 on GPUs without bf16)",
        "rocm": "bfloat16 (float16 on GPUs without bf16)",
        "mps": "bfloat16 (float32 where MPS has no bf16)",
        "mlx": "the MLX trainer's own dtype",
        "cpu": "float32 (bfloat16 on CPUs with AMX / AVX512-BF16)",
    }[backend]


class CatalogError(Exception):
    """Base class of the errors raised by this module."""


class UnknownModelError(CatalogError, LookupError):
    """The model id is not in the catalog."""

    def __init__(self, model_id: str, known: list[str]) -> None:
        self.model_id = model_id
        close = difflib.get_close_matches(model_id, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else " Run `halo-forge models list` to see them."
        super().__init__(f"unknown model id {model_id!r}: it is not in the Halo Forge catalog.{hint}")


class UnsupportedBackendError(CatalogError, ValueError):
    """The backend name is unknown, or the model cannot be finetuned on it."""


class InsufficientMemoryError(CatalogError, ValueError):
    """No supported method fits the model in the given memory, even at the shortest sequence length."""


def catalog_path() -> Path:
    """Path of the shipped ``catalog.json``."""
    return Path(str(resources.files("halo_models") / "data" / "catalog.json"))


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalog file (the shipped one by default; that one is cached).

    Raises ``pydantic.ValidationError`` naming the offending entry and field if the file is invalid.
    """
    if path is None:
        return _shipped_catalog()
    return Catalog.model_validate_json(Path(path).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _shipped_catalog() -> Catalog:
    return Catalog.model_validate_json(catalog_path().read_text(encoding="utf-8"))


def find(model_id: str, catalog: Catalog | None = None) -> CatalogEntry:
    """The catalog entry for ``model_id``; raises :class:`UnknownModelError` if there is none."""
    return (catalog or load_catalog()).find(model_id)


def estimate_memory_gb(
    entry: CatalogEntry,
    backend: Backend,
    method: Method,
    *,
    seq_len: int,
    batch_size: int,
    gradient_checkpointing: bool,
    lora_rank: int | None = None,
) -> float:
    """Rough peak memory (GiB) of LoRA/QLoRA training of ``entry`` with these settings.

    Sum of: fixed backend overhead; frozen weights (2 bytes/param in bf16, 4 in fp32 on CPU; with
    QLoRA ~0.55 bytes/param for quantized layers while embeddings stay bf16); LoRA parameters with
    fp32 grads and AdamW state (16 bytes/param, ~23 x hidden x rank per layer); activations per
    token (bf16 layer inputs per layer when checkpointing plus one layer's worth being recomputed,
    or ~34 x hidden per layer without); and logits in bf16 + fp32 upcast + fp32 grad (10 bytes x
    vocab per token), which dominate for 150K-vocabulary models.
    """
    act_bytes = 4 if backend == "cpu" else 2
    params = entry.params_b * 1e9
    embed = float(entry.vocab_size * entry.hidden_size)
    if method == "qlora" or entry.quantized_bits is not None:
        bits = entry.quantized_bits or 4
        # 4-bit weights plus quantization constants (~10%); embeddings are not quantized.
        weights = max(params - embed, 0.0) * bits / 8 * 1.1 + embed * 2
    else:
        weights = params * act_bytes
    rank = lora_rank if lora_rank is not None else entry.defaults.lora_rank
    lora = entry.num_layers * 23 * entry.hidden_size * rank * 16
    per_layer_token = entry.hidden_size * act_bytes if gradient_checkpointing else 34 * entry.hidden_size * act_bytes
    per_token = entry.num_layers * per_layer_token + 10 * entry.vocab_size
    if gradient_checkpointing:
        per_token += 34 * entry.hidden_size * act_bytes  # the one layer being recomputed
    activations = per_token * seq_len * batch_size
    return _FIXED_OVERHEAD_GB[backend] + (weights + lora + activations) / _GIB


def recommend(
    model_id: str,
    backend: Backend,
    memory_gb: float,
    *,
    catalog: Catalog | None = None,
) -> Recommendation:
    """Propose finetuning settings for ``model_id`` on ``backend`` with ``memory_gb`` GiB.

    ``memory_gb`` is the memory the accelerator can use: GPU memory for cuda/rocm, total unified
    memory for mps/mlx (only ~75% of it is assumed usable by the GPU), RAM for cpu.

    The search: keep the catalog's rank and learning rate; prefer plain LoRA (full-precision base),
    switch to QLoRA where the backend has a 4-bit path and LoRA does not fit, and only then shorten
    the sequence (halving down to 256 tokens). The per-device batch is the largest power of two
    up to 16 that fits, without gradient checkpointing if that still allows a batch of 4, and
    gradient accumulation brings the effective batch to 16.

    Raises :class:`UnknownModelError` for an id not in the catalog, :class:`UnsupportedBackendError`
    for an unknown backend or one the model does not support, and
    :class:`InsufficientMemoryError` when nothing fits.
    """
    if backend not in BACKENDS:
        raise UnsupportedBackendError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if not memory_gb > 0:
        raise ValueError(f"memory_gb must be positive, got {memory_gb}")
    entry = find(model_id, catalog)
    note = entry.backends.get(backend)
    if not note.supported:
        raise UnsupportedBackendError(f"{entry.id} cannot be finetuned on {backend}: {note.note}")

    budget = memory_gb * (_UNIFIED_MEMORY_FRACTION if backend in ("mps", "mlx") else 1.0) * _HEADROOM
    dtype: Dtype = "float32" if backend == "cpu" else "bfloat16"
    notes = [f"{backend}: {note.note}"]
    if entry.notes:
        notes.append(entry.notes)
    if entry.gated:
        notes.append("Gated on the Hub: accept the license on the model page and set HF_TOKEN before downloading.")

    if entry.quantized_bits is not None:
        methods: list[Method] = ["qlora"]  # the weights are already quantized: LoRA on them is QLoRA
    else:
        methods = ["lora", "qlora"] if backend in QLORA_BACKENDS else ["lora"]
    default_seq = min(entry.defaults.max_seq_len, entry.context_length)
    seq_lens = [default_seq]
    while seq_lens[-1] // 2 >= MIN_SEQ_LEN:
        seq_lens.append(seq_lens[-1] // 2)

    for seq_len in seq_lens:
        for method in methods:
            fit = _fit_batch(entry, backend, method, seq_len, budget)
            if fit is None:
                continue
            batch, checkpointing, estimate = fit
            if method == "qlora" and entry.quantized_bits is None:
                notes.append("LoRA on full-precision weights does not fit; using QLoRA (4-bit base weights).")
            if seq_len < default_seq:
                notes.append(f"Sequence length reduced from {default_seq} to {seq_len} to fit in memory.")
            return Recommendation(
                model_id=entry.id,
                backend=backend,
                memory_gb=memory_gb,
                method=method,
                dtype=dtype,
                lora_rank=entry.defaults.lora_rank,
                lora_alpha=entry.defaults.lora_alpha,
                learning_rate=entry.defaults.learning_rate,
                max_seq_len=seq_len,
                per_device_batch_size=batch,
                gradient_accumulation_steps=max(1, EFFECTIVE_BATCH_SIZE // batch),
                gradient_checkpointing=checkpointing,
                estimated_memory_gb=round(estimate, 2),
                notes=notes,
            )
    smallest = estimate_memory_gb(
        entry, backend, methods[-1], seq_len=seq_lens[-1], batch_size=1, gradient_checkpointing=True
    )
    usable = f"{budget:.1f} GiB usable" if backend not in ("mps", "mlx") else f"~{budget:.1f} GiB usable by the GPU"
    raise InsufficientMemoryError(
        f"{entry.id} ({entry.params_b:g}B) does not fit in {memory_gb:g} GiB on {backend} ({usable}): even "
        f"{methods[-1]} at {seq_lens[-1]} tokens, batch 1, gradient checkpointing needs ~{math.ceil(smallest)} GiB. "
        "Pick a smaller model from `halo-forge models list`."
    )


def _fit_batch(
    entry: CatalogEntry, backend: Backend, method: Method, seq_len: int, budget: float
) -> tuple[int, bool, float] | None:
    """Largest power-of-two batch that fits, as (batch, gradient_checkpointing, estimate_gb)."""

    def best(checkpointing: bool) -> tuple[int, float] | None:
        found = None
        batch = 1
        while batch <= MAX_BATCH_SIZE:
            est = estimate_memory_gb(
                entry, backend, method, seq_len=seq_len, batch_size=batch, gradient_checkpointing=checkpointing
            )
            if est > budget:
                break
            found = (batch, est)
            batch *= 2
        return found

    # Checkpointing costs ~30% speed; skip it when a reasonable batch fits without.
    plain = best(checkpointing=False)
    if plain is not None and plain[0] >= 4:
        return plain[0], False, plain[1]
    ckpt = best(checkpointing=True)
    if ckpt is not None:
        return ckpt[0], True, ckpt[1]
    # Checkpointing only ever lowers the estimate, so if nothing fits with it, nothing fits.
    return None


def catalog_json_schema() -> str:
    """JSON Schema of ``catalog.json`` (for editors and the docs export)."""
    return json.dumps(Catalog.model_json_schema(), indent=2)
