"""Loading an HF checkpoint into MLX, applying full / LoRA / DoRA finetuning, and the packed forward.

::

    resolved = resolve_settings(spec)                  # dtype, lr, gradient checkpointing for this host
    model = load_model(resolved.model_path, resolved.dtype)      # mlx-lm's model zoo, HF safetensors directly
    tok = load_tokenizer(resolved.model_path)          # the HF tokenizer: the same ids trainer-torch trains on
    apply_finetune(model, spec)                        # freezes the base and adds mlx-lm LoRA/DoRA layers
    logits = forward(model, ids, positions=pos, segments=seg)    # packed rows: records never attend to each other

Packing needs per-token positions, which mlx-lm's attention does not take: :func:`enable_packing` wraps each
layer's RoPE (plain ``nn.RoPE`` only) so that, inside :func:`forward` with ``positions``, it rotates by those
positions; the block-diagonal causal mask reaches the attention through the per-layer ``cache`` argument
(mlx-lm asks a cache for its mask). Outside :func:`forward` the model behaves exactly as mlx-lm's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from halo_common.errors import Unprocessable
from halo_schemas.rl import RLSpecBase
from halo_schemas.training import TrainSpecBase
from halo_training.models import resolve_model_path

log = logging.getLogger("halo_trainer_mlx")

IGNORE = -100


@dataclass
class ResolvedSettings:
    """The spec's ``auto`` values made concrete for MLX (recorded in replay.json)."""

    backend: str
    device: str
    model_path: str
    dtype: str
    gradient_checkpointing: bool
    learning_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_name() -> str:
    import mlx.core as mx

    return "metal" if mx.metal.is_available() else "cpu"


def resolve_settings(spec: TrainSpecBase) -> ResolvedSettings:
    """dtype auto: float32 (full finetuning keeps float32 master weights; adapters train a bfloat16 base on Metal,
    float32 on MLX's CPU build, where bfloat16 matmuls are emulated). float16 is refused on the CPU build."""
    device = device_name()
    dtype = spec.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device == "metal" and spec.finetune != "full" else "float32"
    elif dtype == "float16" and device == "cpu":
        raise Unprocessable("dtype='float16': half-precision training is not available on the mlx backend's CPU build "
                            "(trainer-mlx); use float32 or bfloat16", param="dtype")
    # GRPO: off (mlx-lm's grad_checkpoint patches the layer class, which the rollouts run too; refused if asked).
    rl = isinstance(spec, RLSpecBase)
    gc = spec.gradient_checkpointing if spec.gradient_checkpointing is not None else (device == "metal" and not rl)
    lr = spec.learning_rate or (2e-5 if spec.finetune == "full" else 2e-4)
    return ResolvedSettings(backend="mlx", device=device, model_path=resolve_model_path(spec.model), dtype=dtype,
                            gradient_checkpointing=bool(gc), learning_rate=float(lr))


def load_tokenizer(path: str) -> Any:
    """The model's HF tokenizer (so chat templates and masks match trainer-torch token for token)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise Unprocessable(f"cannot load the tokenizer of {path}: {exc}", param="model") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "float32") -> Any:
    """An mlx-lm model from an HF directory (safetensors), cast to ``dtype``."""
    import mlx.core as mx
    from mlx_lm.utils import load_model as mlx_load_model

    local = Path(path)
    if not local.is_dir():
        from mlx_lm.utils import hf_repo_to_path

        local = Path(hf_repo_to_path(path))
    try:
        model, _config = mlx_load_model(local)
    except (ValueError, FileNotFoundError) as exc:
        raise Unprocessable(f"mlx-lm cannot load {path}: {exc}", param="model") from None
    target = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}[dtype]
    model.set_dtype(target)
    return model


def model_type(path: str) -> str:
    return str(json.loads((Path(path) / "config.json").read_text()).get("model_type", "?"))


# ---- finetuning -------------------------------------------------------------------------------------
def lora_scale(spec: TrainSpecBase) -> float:
    """PEFT's scaling alpha / r (alpha defaults to 2 x rank, as in trainer-torch)."""
    alpha = spec.lora.alpha if spec.lora.alpha is not None else 2.0 * spec.lora.rank
    return float(alpha) / spec.lora.rank


def lora_keys(model: Any, target: list[str] | str) -> list[str]:
    """Paths inside one transformer block of the linear layers to adapt ('all-linear': every one)."""
    import mlx.nn as nn

    keys = []
    for name, module in model.layers[0].named_modules():
        if not isinstance(module, (nn.Linear, nn.QuantizedLinear)):
            continue
        if target == "all-linear" or any(name == t or name.endswith("." + t) for t in target):
            keys.append(name)
    if not keys:
        raise Unprocessable(f"lora.target_modules={target!r} matches no linear layer of this model "
                            f"(e.g. {', '.join(n for n, _ in list(model.layers[0].named_modules())[:6])})",
                            param="lora.target_modules")
    return sorted(keys)


def apply_finetune(model: Any, spec: TrainSpecBase) -> dict[str, Any]:
    """Freeze the base and add adapters (lora/dora), or leave every weight trainable (full).
    Returns the mlx-lm adapter config (written next to the adapter)."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    if spec.finetune == "full":
        model.unfreeze()
        return {"fine_tune_type": "full", "num_layers": len(model.layers)}
    model.freeze()
    # Preference specs train with dropout off by default (disable_dropout), as trainer-torch does.
    dropout = 0.0 if getattr(spec, "disable_dropout", False) else spec.lora.dropout
    params = {"rank": spec.lora.rank, "scale": lora_scale(spec), "dropout": dropout,
              "keys": lora_keys(model, spec.lora.target_modules)}
    linear_to_lora_layers(model, len(model.layers), params, use_dora=spec.finetune == "dora")
    return {"fine_tune_type": spec.finetune, "num_layers": len(model.layers), "lora_parameters": params}


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts (adapter layers counted once, the wrapped base in total)."""
    from mlx.utils import tree_flatten

    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    return int(trainable), int(total)


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each transformer block's activations in the backward pass (mlx-lm's grad_checkpoint)."""
    from mlx_lm.tuner.trainer import grad_checkpoint

    grad_checkpoint(model.layers[0])


# ---- packed forward ---------------------------------------------------------------------------------
_packing = threading.local()


class _PositionalRoPE:
    """Wraps an ``nn.RoPE``: inside :func:`forward` with positions, rotates by per-token positions (the same
    formula as ``nn.RoPE``), else defers to it."""

    def __init__(self, rope: Any) -> None:
        self.rope = rope

    def __call__(self, x: Any, offset: int = 0) -> Any:
        import mlx.core as mx

        positions = getattr(_packing, "positions", None)
        if positions is None:
            return self.rope(x, offset=offset)
        dims, base, scale = self.rope.dims, self.rope.base, self.rope.scale
        half = dims // 2
        freqs = mx.exp(-mx.arange(0, half, dtype=mx.float32) * (mx.log(mx.array(base, mx.float32)) / half))
        theta = (positions.astype(mx.float32) * scale)[:, None, :, None] * freqs  # B,1,L,half
        cos, sin = mx.cos(theta).astype(x.dtype), mx.sin(theta).astype(x.dtype)
        if self.rope.traditional:
            x1, x2 = x[..., 0:dims:2], x[..., 1:dims:2]
            rot = mx.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).reshape(*x.shape[:-1], dims)
        else:
            x1, x2 = x[..., :half], x[..., half:dims]
            rot = mx.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
        return mx.concatenate([rot, x[..., dims:]], axis=-1) if dims < x.shape[-1] else rot


class _PackedMask:
    """Stands in for a layer's KV cache during a packed forward: it only provides the block-diagonal mask."""

    offset = 0

    def __init__(self, mask: Any) -> None:
        self.mask = mask

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None) -> Any:
        return self.mask

    def update_and_fetch(self, keys: Any, values: Any) -> tuple[Any, Any]:
        return keys, values


def enable_packing(model: Any) -> None:
    """Make the model accept packed rows in :func:`forward` (Llama-family attention with plain RoPE only)."""
    import mlx.nn as nn

    for i, layer in enumerate(model.layers):
        attn = getattr(layer, "self_attn", None)
        rope = getattr(attn, "rope", None)
        if isinstance(rope, _PositionalRoPE):
            continue
        if not isinstance(rope, nn.RoPE) or getattr(layer, "use_sliding", False):
            raise Unprocessable(f"packing=true: per-record positions are not available for this architecture on the "
                                f"mlx backend (layer {i}: {type(rope).__name__}); set packing=false", param="packing")
        # Plain attribute (not a child module): the wrapper holds no parameters and stays out of checkpoints.
        object.__setattr__(attn, "rope", _PositionalRoPE(rope))


@contextlib.contextmanager
def _positions(positions: Any) -> Iterator[None]:
    _packing.positions = positions
    try:
        yield
    finally:
        _packing.positions = None


def forward(model: Any, ids: Any, positions: Any | None = None, segments: Any | None = None) -> Any:
    """Logits of a batch. Packed rows pass ``positions`` (B, L) and ``segments`` (B, L): attention stays inside
    a segment and is causal; positions restart per record."""
    import mlx.core as mx

    if positions is None:
        return model(ids)
    n = ids.shape[1]
    causal = mx.tril(mx.ones((n, n), dtype=mx.bool_))
    mask = (segments[:, None, :, None] == segments[:, None, None, :]) & causal
    with _positions(positions):
        return model(ids, cache=[_PackedMask(mask) for _ in model.layers])


#: mlx-lm architectures whose ``Model.__call__`` is exactly ``lm_head(model(...))`` (or the tied embedding): for
#: them :func:`hidden_states` + :func:`lm_head` compute logits only where a loss is taken.
PLAIN_HEAD_MODULES = ("mlx_lm.models.llama", "mlx_lm.models.qwen2", "mlx_lm.models.qwen3")


def has_plain_head(model: Any) -> bool:
    return type(model).__module__ in PLAIN_HEAD_MODULES and hasattr(model, "model")


def hidden_states(model: Any, ids: Any, positions: Any | None = None, segments: Any | None = None) -> Any:
    """The last hidden states (B, L, H) of :func:`forward` (before the LM head); ``has_plain_head`` models only."""
    import mlx.core as mx

    if positions is None:
        return model.model(ids)
    n = ids.shape[1]
    causal = mx.tril(mx.ones((n, n), dtype=mx.bool_))
    mask = (segments[:, None, :, None] == segments[:, None, None, :]) & causal
    with _positions(positions):
        return model.model(ids, cache=[_PackedMask(mask) for _ in model.layers])


def lm_head(model: Any, hidden: Any) -> Any:
    """Logits of selected hidden states (the tied embedding or ``lm_head``, as the model's own ``__call__``)."""
    if model.args.tie_word_embeddings:
        return model.model.embed_tokens.as_linear(hidden)
    return model.lm_head(hidden)

