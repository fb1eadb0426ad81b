"""Model side of every recipe: resolving ``auto`` settings for the backend, loading tokenizer and model,
applying the finetuning mode (full, LoRA, QLoRA, DoRA, rsLoRA, PiSSA) and exporting the result in
standard Hugging Face / PEFT format.

Usage::

    resolved = resolve_settings(spec)                  # raises Unprocessable for unsupported options
    tok = load_tokenizer(resolved.model_path, spec.trust_remote_code)
    model = load_model(spec, resolved, task="causal")  # PeftModel for adapter modes

``model`` may also be ``tiny://llama`` / ``tiny://qwen2`` (``?size=small`` for ~25M parameters): a
deterministic random-weight model from the halo-models kit, built on first use. It exists for the demo,
tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from halo_common.backend import Backend, capabilities, detect_backend, require
from halo_common.errors import BadRequest, Unprocessable
from halo_schemas.training import TrainSpecBase
from halo_training.models import resolve_model_path, write_verifier_manifest  # noqa: F401  (re-exported)

log = logging.getLogger("halo_trainer_torch.model")

ADAPTER_MODES = ("lora", "qlora", "dora", "rslora", "pissa")


@dataclass
class ResolvedSettings:
    """The spec's ``auto`` values made concrete for one backend (recorded in replay.json)."""

    backend: str
    model_path: str
    dtype: str  # compute dtype: float32 | bfloat16 | float16
    load_dtype: str  # dtype the weights are loaded in
    attn_implementation: str
    gradient_checkpointing: bool
    learning_rate: float
    use_cpu: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"

    @property
    def fp16(self) -> bool:
        return self.dtype == "float16"


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16): there bf16 autocast trains
    about twice as fast as float32; elsewhere it is emulated and slower."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_settings(spec: TrainSpecBase, backend: Backend | None = None) -> ResolvedSettings:
    """Resolve dtype, attention kernel, gradient checkpointing and learning rate; refuse what the backend
    cannot do (QLoRA without bitsandbytes, float16 on CPU, flash attention without flash-attn...)."""
    backend = backend or detect_backend()
    caps = capabilities(backend)
    if not caps.torch:
        raise Unprocessable(f"trainer-torch cannot train on backend '{backend}': use trainer-mlx", param="backend")
    if spec.finetune == "qlora":
        require("four_bit", backend)
    if spec.dtype == "auto":
        if backend in (Backend.CUDA, Backend.ROCM):
            dtype = "bfloat16" if caps.bf16 else "float16"
        elif backend == Backend.MPS:
            dtype = "bfloat16" if caps.bf16 else "float32"
        else:
            dtype = "bfloat16" if cpu_has_native_bf16() else "float32"
    else:
        dtype = spec.dtype
        if dtype == "bfloat16":
            require("bf16", backend)
        elif dtype == "float16":
            require("fp16", backend)
    if spec.attn_implementation == "auto":
        attn = "flash_attention_2" if caps.flash_attn and dtype != "float32" else "sdpa"
    else:
        attn = spec.attn_implementation
        if attn == "flash_attention_2":
            require("flash_attn", backend)
    gc = spec.gradient_checkpointing
    if gc is None:
        gc = backend != Backend.CPU
    lr = spec.learning_rate or (2e-5 if spec.finetune == "full" else 2e-4)
    # Full finetuning keeps float32 master weights and autocasts; adapters load the frozen base in the
    # compute dtype (QLoRA: 4-bit, with the compute dtype for the matmuls).
    load_dtype = "float32" if spec.finetune == "full" else dtype
    if spec.num_processes > 1 and spec.finetune == "pissa" and (
        spec.distributed == "fsdp" or (spec.distributed == "deepspeed" and spec.deepspeed_stage == 3)
    ):
        raise Unprocessable("pissa cannot be exported from sharded parameters: use distributed=ddp", param="finetune")
    if spec.num_processes > 1 and spec.finetune == "qlora" and spec.distributed != "ddp":
        raise Unprocessable("qlora supports distributed=ddp only", param="distributed")
    return ResolvedSettings(
        backend=str(backend),
        model_path=resolve_model_path(spec.model),
        dtype=dtype,
        load_dtype=load_dtype,
        attn_implementation=attn,
        gradient_checkpointing=bool(gc),
        learning_rate=float(lr),
        use_cpu=backend == Backend.CPU,
    )


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer, with a pad token (falling back to EOS) and right padding."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise BadRequest(f"cannot load tokenizer of model {path!r}: {exc}", param="model") from None
    except ValueError as exc:
        raise _load_error(path, exc) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def _quantization_config(resolved: ResolvedSettings) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(resolved.dtype),
    )


def load_base_model(spec: TrainSpecBase, resolved: ResolvedSettings, task: str = "causal", path: str | None = None) -> Any:
    """Load the base model (``task`` = "causal" or "seq_cls" with one output) without adapters."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(resolved.load_dtype),
        "attn_implementation": resolved.attn_implementation,
        "trust_remote_code": spec.trust_remote_code,
    }
    if spec.finetune == "qlora":
        kwargs["quantization_config"] = _quantization_config(resolved)
    cls = AutoModelForCausalLM if task == "causal" else AutoModelForSequenceClassification
    if task == "seq_cls":
        kwargs["num_labels"] = 1
    target = path or resolved.model_path
    try:
        with _quiet_transformers():
            model = cls.from_pretrained(target, **kwargs)
    except OSError as exc:
        raise BadRequest(f"cannot load model {target!r}: {exc}", param="model") from None
    except ValueError as exc:
        raise _load_error(target, exc) from None
    if task == "seq_cls" and model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def _load_error(path: str, exc: ValueError) -> Unprocessable:
    """transformers' ValueError, worded for the user: a model whose architecture exists only as code it
    ships (config ``auto_map``) is never run without ``trust_remote_code`` (see docs/training.md)."""
    if "trust_remote_code" in str(exc):
        return Unprocessable(f"model {path} needs its own Python code (auto_map) to load; Halo Forge does not run it "
                             "unless trust_remote_code is set and the host allows it (HALO_ALLOW_REMOTE_CODE)",
                             param="model")
    return Unprocessable(f"cannot load model {path!r}: {exc}", param="model")


@contextlib.contextmanager
def _quiet_transformers() -> Any:
    """Loading a causal checkpoint into a classification head logs a warning per new weight: expected."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)


def lora_config(spec: TrainSpecBase, task: str = "causal") -> Any:
    """The PEFT ``LoraConfig`` for the spec's adapter mode."""
    from peft import LoraConfig, TaskType

    mode = spec.finetune
    lcfg = spec.lora
    target = lcfg.target_modules if lcfg.target_modules == "all-linear" else list(lcfg.target_modules)
    return LoraConfig(
        r=lcfg.rank,
        lora_alpha=lcfg.alpha if lcfg.alpha is not None else 2 * lcfg.rank,
        # PiSSA adapts the principal components in place; dropout on them perturbs the base model itself.
        lora_dropout=0.0 if mode == "pissa" else lcfg.dropout,
        target_modules=target,
        modules_to_save=list(lcfg.modules_to_save) or None,
        task_type=TaskType.CAUSAL_LM if task == "causal" else TaskType.SEQ_CLS,
        use_dora=mode == "dora",
        use_rslora=mode == "rslora",
        init_lora_weights="pissa" if mode == "pissa" else True,
        bias="none",
    )


def apply_finetune(model: Any, spec: TrainSpecBase, resolved: ResolvedSettings, task: str = "causal") -> Any:
    """Wrap ``model`` for the spec's finetune mode; full finetuning returns it unchanged."""
    if spec.finetune == "full":
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if spec.finetune == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=resolved.gradient_checkpointing)
    return get_peft_model(model, lora_config(spec, task))


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def save_pissa_init(model: Any, init_dir: Path) -> None:
    """Save PiSSA's initial adapter once (atomically), so the trained adapter can later be converted to a
    plain LoRA that applies to the *original* base model."""
    if (init_dir / "adapter_config.json").exists():
        return
    tmp = init_dir.with_name(init_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cfg = model.peft_config["default"]
    saved = cfg.init_lora_weights
    cfg.init_lora_weights = True  # the saved config must describe a plain LoRA init
    try:
        model.save_pretrained(str(tmp))
    finally:
        cfg.init_lora_weights = saved
    if init_dir.exists():  # a concurrent writer (another rank) won; both wrote the same initial adapter
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, init_dir)
