"""Serve backends and how one is chosen for a model.

``make_backend(name)`` builds a backend by name; ``choose_backend(format, forced)`` picks the name
for a model format on this host (or checks a forced one). Backends are imported lazily, so a host
without llama-cpp-python or mlx never imports them.
"""

from __future__ import annotations

import importlib
from typing import Any

from halo_common.backend import Backend, detect_backend
from halo_common.errors import BadRequest, Unprocessable

from halo_serve.core.backends.base import ServeBackend

#: backend name -> "module:Class" (S2 owns llamacpp / mlx_backend; vllm is gated and optional).
BACKENDS: dict[str, str] = {
    "transformers": "halo_serve.core.backends.transformers_backend:TransformersBackend",
    "llamacpp": "halo_serve.core.backends.llamacpp:LlamaCppBackend",
    "mlx": "halo_serve.core.backends.mlx_backend:MLXBackend",
}

#: format -> backends that read it, preferred first.
FORMAT_BACKENDS: dict[str, tuple[str, ...]] = {"hf": ("transformers",), "gguf": ("llamacpp",), "mlx": ("mlx",)}


def backend_class(name: str) -> type[ServeBackend]:
    """The class of backend ``name``; BadRequest for an unknown name, Unprocessable when its
    libraries are missing here."""
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
