"""Model FLOPs of a training run, and how close they come to the device's peak (MFU).

Usage (a trainer, after its training loop)::

    shape = ModelShape.from_config(model.config)             # None for a shape it does not know
    per_token = training_flops_per_token(shape, context=attention_context(lengths),
                                         adapter_parameters=lora_params or None)
    peak = peak_flops(device_name, "bfloat16", measure=lambda: my_matmul_flops(), home=halo_home)
    mfu(per_token * tokens / seconds, peak)

**The count** (PaLM's "model FLOPs", appendix B of Chowdhury et al. 2022): per token,

* a dense matmul with ``P`` weights costs ``2P`` FLOPs forward; backward costs ``2P`` for the gradient with
  respect to its input and ``2P`` for the gradient of its weights;
* ``N`` = the weights of every matmul on the token's path: per layer the q, k, v, o projections and the MLP
  (gate, up, down), plus the LM head. The input embedding is a lookup, not a matmul, and is not counted
  (a tied LM head still is: it is a matmul). Norms, biases, activations and the loss are not counted
  (under 1 % at these shapes);
* attention adds, per layer and per token, ``2 * d_attn * T`` for ``QK^T`` and as much for ``AV`` forward
  (``d_attn`` = heads x head_dim, ``T`` = the length of the sequence the token attends within: the record's
  own length when records are packed with block-diagonal attention), and twice that backward: ``12 L d_attn T``
  per token for a training step. Like PaLM, the causal mask's skipped half is counted (the usual convention,
  so figures compare with published MFU);

**Full finetuning**: ``6N + 12 L d_attn T``.

**Adapters (LoRA and kin)** with ``A`` adapter weights: the frozen base runs forward (``2N``) and its input
gradients are still needed backward, to reach the adapters of lower layers (``2N``), but no weight gradient
of a frozen matrix is computed; the adapters are matmuls of their own (``6A``). So
``4N + 6A + 12 L d_attn T``. (Adapters reach the first layer in the usual target sets, so backward runs
through the whole stack.)

**Extra forward passes** (a DPO reference model, or the policy with its adapter disabled): ``2N + 4 L d_attn T``
each per token.

**The peak**: a table of dense tensor-core peaks per GPU and dtype (:data:`GPU_PEAK_FLOPS`, datasheet figures,
no sparsity); for a CPU or a device not in the table, the best of a few timed dense matmuls in the training
dtype (the trainer supplies the measurement), cached per host and dtype in ``HALO_HOME/hardware/peak_flops.json``
so each run does not pay for it. A measured peak on a machine busy with other work reads low (MFU then reads
high): delete the cache file to measure again on a quiet machine.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Dense peak FLOP/s per GPU (datasheet, no structured sparsity), by dtype; first matching name wins, so a
#: variant (``H100 PCIe``) comes before its family (``H100``). float32 is plain FP32 (PyTorch's default does
#: not use TF32 for matmuls).
GPU_PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bfloat16": 756e12, "float16": 756e12, "float32": 51.2e12}),
    ("H100 NVL", {"bfloat16": 835e12, "float16": 835e12, "float32": 60e12}),
    ("H100", {"bfloat16": 989.4e12, "float16": 989.4e12, "float32": 66.9e12}),
    ("H200", {"bfloat16": 989.4e12, "float16": 989.4e12, "float32": 66.9e12}),
    ("B200", {"bfloat16": 2250e12, "float16": 2250e12}),
    ("A100", {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12}),
    ("L40S", {"bfloat16": 362.05e12, "float16": 362.05e12, "float32": 91.6e12}),
    ("L4", {"bfloat16": 121e12, "float16": 121e12, "float32": 30.3e12}),
    ("V100", {"float16": 125e12, "float32": 15.7e12}),
    ("T4", {"float16": 65e12, "float32": 8.1e12}),
    ("MI300X", {"bfloat16": 1307.4e12, "float16": 1307.4e12, "float32": 163.4e12}),
    ("MI250X", {"bfloat16": 383e12, "float16": 383e12, "float32": 95.7e12}),
)


@dataclass(frozen=True)
class ModelShape:
    """The matmul shapes of a decoder-only transformer (Llama/Qwen/Mistral-style: gated MLP of 3 matrices)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    mlp_matrices: int = 3

    @classmethod
    def from_config(cls, config: Any) -> ModelShape | None:
        """From a Hugging Face config (object or dict); None when a field is missing (MFU is then absent)."""
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        try:
            hidden, heads = int(get("hidden_size")), int(get("num_attention_heads"))
            kv = get("num_key_value_heads") or heads
            head_dim = get("head_dim") or hidden // heads
            act = str(get("hidden_act") or get("hidden_activation") or "silu")
            gated = act in ("silu", "swiglu", "gelu_pytorch_tanh", "geglu") or get("model_type") in (
                "llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2")
            return cls(layers=int(get("num_hidden_layers")), hidden=hidden, heads=heads, kv_heads=int(kv),
                       head_dim=int(head_dim), intermediate=int(get("intermediate_size")),
                       vocab=int(get("vocab_size")), mlp_matrices=3 if gated else 2)
        except (TypeError, ValueError):
            return None

    @property
    def attention_width(self) -> int:
        """``d_attn`` = heads x head_dim (the width of QK^T and AV)."""
        return self.heads * self.head_dim

    def matmul_parameters(self) -> int:
        """``N``: weights of every matmul a token passes through (layers + LM head; not the embedding)."""
        q_o = 2 * self.hidden * self.attention_width
        k_v = 2 * self.hidden * self.kv_heads * self.head_dim
        mlp = self.mlp_matrices * self.hidden * self.intermediate
        return self.layers * (q_o + k_v + mlp) + self.hidden * self.vocab


def attention_context(lengths: Sequence[int]) -> float:
    """``T`` averaged over tokens: a token in a sequence of length n attends within n, so the mean is
    ``sum(n^2) / sum(n)`` over the sequences (records, when packed with block-diagonal attention)."""
    total = sum(lengths)
    return sum(n * n for n in lengths) / total if total else 0.0


def training_flops_per_token(shape: ModelShape, context: float, *, adapter_parameters: int | None = None,
                             extra_forward_passes: float = 0.0) -> float:
    """Model FLOPs per trained token of one optimizer step (see the module docstring for the formula).

    ``adapter_parameters``: the adapter weights when only adapters train (LoRA, DoRA, ...); None for full
    finetuning. ``extra_forward_passes``: forward-only passes over the same tokens (a DPO reference)."""
    n = shape.matmul_parameters()
    attn_fwd = 4.0 * shape.layers * shape.attention_width * context
    if adapter_parameters is None:
        step = 6.0 * n + 3.0 * attn_fwd
    else:
        step = 4.0 * n + 6.0 * adapter_parameters + 3.0 * attn_fwd
    return step + extra_forward_passes * (2.0 * n + attn_fwd)


def gpu_peak_flops(device_name: str, dtype: str) -> float | None:
    """The table's dense peak for ``device_name`` (e.g. ``torch.cuda.get_device_name()``) in ``dtype``."""
    name = device_name.upper()
    for pattern, peaks in GPU_PEAK_FLOPS:
        if pattern.upper() in name:
            return peaks.get(dtype)
    return None


def host_key(device: str, dtype: str, threads: int | None = None) -> str:
    """Cache key of a measured peak: host name, processor, device, dtype and compute threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{socket.gethostname()}|{cpu}|{device}|{dtype}|threads={threads if threads is not None else os.cpu_count()}"


def peak_cache_file(home: Path) -> Path:
    """``HALO_HOME/hardware/peak_flops.json``."""
    return Path(home) / "hardware" / "peak_flops.json"


def measured_peak_flops(key: str, measure: Callable[[], float], cache_file: Path) -> float:
    """The cached peak under ``key``, else ``measure()`` (FLOP/s of a dense matmul), stored for next time.
    A cache file that cannot be read or written is ignored (the peak is then measured each run)."""
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key) if isinstance(cache, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("flops"), (int, float)) and entry["flops"] > 0:
        return float(entry["flops"])
    flops = float(measure())
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = {"flops": flops, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=2) + "\n")
        tmp.replace(cache_file)
    except OSError:
        pass
    return flops


def peak_flops(device_name: str, dtype: str, *, measure: Callable[[], float] | None, home: Path,
               device_kind: str = "cpu", threads: int | None = None) -> tuple[float | None, str | None]:
    """(peak FLOP/s, where it came from: ``table:<name>`` or ``measured:<dtype> matmul``) for a device.
    The table first; else the cached or new measurement; (None, None) when neither is possible."""
    peak = gpu_peak_flops(device_name, dtype) if device_kind != "cpu" else None
    if peak is not None:
        return peak, f"table:{device_name}"
    if measure is None:
        return None, None
    key = host_key(f"{device_kind}:{device_name}", dtype, threads)
    return measured_peak_flops(key, measure, peak_cache_file(home)), f"measured:{dtype} matmul"


def mfu(achieved_flops_per_second: float | None, peak: float | None) -> float | None:
    """Model FLOPs utilisation (0..1, or above 1 when the peak was measured low), None when unknown."""
    if not achieved_flops_per_second or not peak:
        return None
    return achieved_flops_per_second / peak
