"""Serve backends and how one is chosen for a model.

``make_backend(name)`` builds a backend by name; ``choose_backend(format, forced)`` picks the name
for a model format on this host (or checks a forced one). Backends are imported lazily, so a host
without llama-cpp-python or mlx never imports them.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from halo_common.backend import Backend, detect_backend
from halo_common.errors import BadRequest, Unprocessable

from halo_serve.core.backends.base import ServeBackend

#: backend name -> "module:Class". vLLM is not one of them: ``--backend vllm`` is refused with what to do.
BACKENDS: dict[str, str] = {
    "transformers": "halo_serve.core.backends.transformers_backend:TransformersBackend",
    "llamacpp": "halo_serve.core.backends.llamacpp:LlamaCppBackend",
    "mlx": "halo_serve.core.backends.mlx_backend:MLXBackend",
}

#: format -> backends that read it, preferred first.
FORMAT_BACKENDS: dict[str, tuple[str, ...]] = {"hf": ("transformers",), "gguf": ("llamacpp",), "mlx": ("mlx",)}


def _vllm_refusal() -> str:
    """Why ``--backend vllm`` is refused: vLLM is an optional GPU extra (CUDA/ROCm) that this serve does
    not drive itself (see docs/serve.md); the message says what to do on either kind of host."""
    try:
        installed = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        return ("backend 'vllm' is not installed here: vLLM is an optional extra for CUDA/ROCm hosts "
                "(pip install vllm on such a host); use transformers, llamacpp or mlx, or leave --backend unset")
    return ("backend 'vllm': vLLM is installed, but serve does not run models through it; start vLLM's own "
            "OpenAI server (`vllm serve MODEL`) or use transformers, llamacpp or mlx here")


def backend_class(name: str) -> type[ServeBackend]:
    """The class of backend ``name``; BadRequest for an unknown name, Unprocessable when its
    libraries are missing here (``vllm``: always, with what to do instead)."""
    if name == "vllm":
        raise Unprocessable(_vllm_refusal(), param="backend")
    if name not in BACKENDS:
        raise BadRequest(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}", param="backend")
    module, cls_name = BACKENDS[name].split(":")
    try:
        cls: type[ServeBackend] = getattr(importlib.import_module(module), cls_name)
    except ImportError as e:
        raise Unprocessable(f"backend {name!r} is not installed here: {e}", param="backend") from e
    if not cls.available():
        raise Unprocessable(f"backend {name!r} cannot run on this host", param="backend")
    return cls


def make_backend(name: str, **options: Any) -> ServeBackend:
    """A new backend instance (``options`` go to its constructor)."""
    return backend_class(name)(**options)


def choose_backend(fmt: str, forced: str | None = None) -> str:
    """The backend name for a model of format ``fmt`` (``forced``: the user's choice, checked)."""
    if fmt not in FORMAT_BACKENDS:
        raise BadRequest(f"unknown model format {fmt!r}; known: {', '.join(FORMAT_BACKENDS)}", param="format")
    if forced and forced != "auto":
        cls = backend_class(forced)
        if fmt not in cls.formats:
            raise BadRequest(f"backend {forced!r} cannot serve {fmt!r} models (it reads {', '.join(cls.formats)})",
                             param="backend")
        return forced
    candidates = FORMAT_BACKENDS[fmt]
    # Apple silicon: MLX weights run on Metal there; elsewhere mlx-lm's CPU build.
    if fmt == "hf" and detect_backend() == Backend.MLX:
        candidates = ("transformers",)
    return candidates[0]
