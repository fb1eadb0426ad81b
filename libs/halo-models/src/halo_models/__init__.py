"""Halo Forge model kit.

Two halves, both importable without loading torch:

- :mod:`halo_models.tiny` builds deterministic random-weight Llama / Qwen2 models (and their
  byte-level BPE ChatML tokenizer) in well under a second, for tests and benchmarks::

      from halo_models import make_tiny, make_tiny_cached
      path = make_tiny("/tmp/tiny", arch="qwen2")          # -> Path, loadable with AutoModel*

- :mod:`halo_models.catalog` lists real base models with per-backend notes and finetuning
  defaults::

      from halo_models import load_catalog, recommend
      rec = recommend("Qwen/Qwen2.5-1.5B-Instruct", "cuda", memory_gb=24)

Test fixtures (``tiny_model_dir``, ``tiny_qwen2_dir``, ``tiny_seq_cls_dir``) live in
:mod:`halo_models.pytest_plugin`; load them with ``pytest_plugins = ["halo_models.pytest_plugin"]``.
"""

from halo_models.catalog import (
    BACKENDS,
    Backend,
    Catalog,
    CatalogEntry,
    CatalogError,
    InsufficientMemoryError,
    Recommendation,
    UnknownModelError,
    UnsupportedBackendError,
    find,
    load_catalog,
    recommend,
)
from halo_models.tiny import (
    KIT_VERSION,
    SIZE_PRESETS,
    TinySpec,
    build_model,
    build_tokenizer,
    default_cache_root,
    make_tiny,
    make_tiny_cached,
)

__all__ = [
    "BACKENDS",
    "KIT_VERSION",
    "SIZE_PRESETS",
    "Backend",
    "Catalog",
    "CatalogEntry",
    "CatalogError",
    "InsufficientMemoryError",
    "Recommendation",
    "TinySpec",
    "UnknownModelError",
    "UnsupportedBackendError",
    "build_model",
    "build_tokenizer",
    "default_cache_root",
    "find",
    "load_catalog",
    "make_tiny",
    "make_tiny_cached",
    "recommend",
]
