"""Accelerator backend detection and the capability matrix (docs/architecture.md).

``detect_backend()`` is called once per process; ``capabilities(backend)`` says what that
backend supports, and :func:`require` refuses an unsupported combination with a message that
names the capability and the backend, before any work starts.
"""

from __future__ import annotations

import importlib.util
import platform
from enum import StrEnum
from functools import lru_cache

from pydantic import BaseModel, Field

from halo_common.errors import Unprocessable


class Backend(StrEnum):
    CUDA = "cuda"
    ROCM = "rocm"
    MPS = "mps"
    MLX = "mlx"
    CPU = "cpu"


class Capabilities(BaseModel):
    """What a backend can do. Every field is checked by :func:`require` before a job starts."""

    backend: Backend = Field(description="The backend these capabilities describe.")
    torch: bool = Field(description="PyTorch training and inference run here.")
    bf16: bool = Field(description="bfloat16 compute is supported and fast.")
    fp16: bool = Field(description="float16 compute is supported.")
    four_bit: bool = Field(description="4-bit quantisation via bitsandbytes (QLoRA).")
    flash_attn: bool = Field(description="FlashAttention 2 kernels are installed and usable.")
    vllm: bool = Field(description="vLLM is installed and usable for rollouts/serving.")
    mlx: bool = Field(description="Apple MLX (or its Linux CPU build) is importable.")
    multi_gpu: bool = Field(description="More than one device is visible for data/model parallelism.")
    device_count: int = Field(description="Number of visible accelerator devices (0 for CPU).")
    notes: list[str] = Field(default_factory=list, description="Human-readable caveats.")


def _has(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


@lru_cache(maxsize=1)
def detect_backend() -> Backend:
    """The best backend available: cuda > rocm > mps > mlx (Apple silicon) > cpu."""
    if _has("torch"):
        import torch

        if torch.cuda.is_available():
            return Backend.ROCM if getattr(torch.version, "hip", None) else Backend.CUDA
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return Backend.MPS
    if platform.system() == "Darwin" and platform.machine() == "arm64" and _has("mlx"):
        return Backend.MLX
    return Backend.CPU


@lru_cache(maxsize=8)
def capabilities(backend: Backend | None = None) -> Capabilities:
    """The capability matrix row for ``backend`` (default: the detected one)."""
    backend = backend or detect_backend()
    has_torch = _has("torch")
    notes: list[str] = []
    count = 0
    bf16 = fp16 = False
    if backend in (Backend.CUDA, Backend.ROCM) and has_torch:
        import torch

        count = torch.cuda.device_count()
        bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        fp16 = True
    elif backend == Backend.MPS:
        count, bf16, fp16 = 1, True, True
        notes.append("MPS: no 4-bit quantisation, no FlashAttention; use LoRA in fp16/bf16.")
    elif backend == Backend.MLX:
        count, bf16, fp16 = 1, True, True
        notes.append("MLX: train with trainer-mlx (mlx-lm LoRA); QLoRA via MLX 4-bit quantised bases.")
    else:
        bf16 = has_torch  # CPU supports bf16 math, slowly; fp16 matmul on CPU is not worth it.
        notes.append("CPU: fine for the tiny model and tests; real models need an accelerator.")
    four_bit = backend in (Backend.CUDA, Backend.ROCM) and _has("bitsandbytes")
    if backend == Backend.CPU and _has("bitsandbytes"):
        notes.append("bitsandbytes is installed but its 4-bit kernels only partly run on CPU: QLoRA is refused.")
    return Capabilities(
        backend=backend,
        torch=has_torch and backend != Backend.MLX,
        bf16=bf16,
        fp16=fp16,
        four_bit=four_bit,
        flash_attn=backend in (Backend.CUDA, Backend.ROCM) and _has("flash_attn"),
        vllm=backend in (Backend.CUDA, Backend.ROCM) and _has("vllm"),
        mlx=_has("mlx"),
        multi_gpu=count > 1,
        device_count=count,
        notes=notes,
    )


_INSTALL_HINT = {
    "four_bit": "QLoRA needs bitsandbytes 4-bit kernels on CUDA/ROCm; use method 'lora' here.",
    "bf16": "use dtype float32 (or float16 where supported).",
    "flash_attn": "install flash-attn on a CUDA/ROCm machine or use attn_implementation='sdpa'.",
    "vllm": "install the 'vllm' extra on a CUDA/ROCm machine, or use the transformers backend.",
    "mlx": "pip install 'mlx[cpu]' mlx-lm (Linux) or mlx mlx-lm (Apple silicon).",
    "torch": "install torch for this backend.",
    "multi_gpu": "num_processes > 1 needs several devices (or the CPU gloo backend for tests).",
}


def require(capability: str, backend: Backend | None = None) -> None:
    """Raise :class:`Unprocessable` naming ``capability`` and the backend if it is unsupported."""
    caps = capabilities(backend)
    if not hasattr(caps, capability):
        raise ValueError(f"unknown capability {capability!r}")
    if not getattr(caps, capability):
        raise Unprocessable(
            f"{capability} is not supported on backend '{caps.backend}': {_INSTALL_HINT.get(capability, '')}".strip(),
            param=capability,
        )
