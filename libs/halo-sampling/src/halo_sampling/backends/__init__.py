"""Rollout backends behind one interface (:class:`~halo_sampling.backends.base.RolloutBackend`).

``make_backend(name, **options)`` builds one (without loading a model); ``resolve_backend("auto")``
picks the best one for this machine: vLLM on CUDA/ROCm when it is installed, MLX on Apple
silicon, transformers everywhere else. On Linux the MLX CPU build is only used when asked for
(``backend="mlx"``): transformers on CPU is the better default there.
"""

from __future__ import annotations

from typing import Any

from halo_common.backend import Backend, capabilities, detect_backend
from halo_common.errors import BadRequest

from halo_sampling.backends.base import RolloutBackend

BACKENDS = ("transformers", "vllm", "mlx")


def resolve_backend(name: str) -> str:
    """The concrete backend for ``name`` (``auto`` resolved for this machine)."""
    if name == "auto":
        caps = capabilities()
        if caps.vllm:
            return "vllm"
        if detect_backend() == Backend.MLX:
            return "mlx"
        return "transformers"
    if name not in BACKENDS:
        raise BadRequest(f"unknown rollout backend {name!r}; choose auto, {', '.join(BACKENDS)}", param="backend")
    return name


def make_backend(name: str, *, max_batch_size: int = 64, **options: Any) -> RolloutBackend:
    """Build (not load) a backend: ``make_backend("mlx").load(path)``. vLLM/MLX raise Unprocessable
    with an install hint where they are not installed."""
    name = resolve_backend(name)
    if name == "transformers":
        from halo_sampling.backends.transformers_backend import TransformersBackend

        return TransformersBackend(max_batch_size=max_batch_size, **options)
    if name == "vllm":
        from halo_sampling.backends.vllm_backend import VLLMBackend

        return VLLMBackend(max_batch_size=max(max_batch_size, 1), **options)
    from halo_sampling.backends.mlx_backend import MLXBackend

    return MLXBackend(max_batch_size=max_batch_size, **options)


__all__ = ["BACKENDS", "RolloutBackend", "make_backend", "resolve_backend"]
