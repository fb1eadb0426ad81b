"""Pytest fixtures that hand out tiny model directories, built once and cached on disk.

Load from a conftest (this module is deliberately not a ``pytest11`` entry point, so installing
halo-models does not inject fixtures into unrelated test suites)::

    pytest_plugins = ["halo_models.pytest_plugin"]

    def test_loads(tiny_model_dir):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

Builds live under ``$HALO_TINY_CACHE`` (default ``~/.cache/halo-forge/tiny``) and are reused
across sessions and pytest-xdist workers; see :func:`halo_models.tiny.make_tiny_cached`. The
directories are shared: treat them as read-only and ``shutil.copytree`` one into ``tmp_path``
before changing files in it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from halo_models.tiny import default_cache_root, make_tiny_cached


@pytest.fixture(scope="session")
def tiny_cache_root() -> Path:
    """Directory holding cached tiny-model builds (``$HALO_TINY_CACHE`` or ``~/.cache/halo-forge/tiny``)."""
    return default_cache_root()


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_cache_root: Path) -> Path:
    """Tiny random-weight ``LlamaForCausalLM`` + ChatML tokenizer (read-only, shared)."""
    return make_tiny_cached(tiny_cache_root, arch="llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tiny_cache_root: Path) -> Path:
    """Tiny random-weight ``Qwen2ForCausalLM`` + ChatML tokenizer (read-only, shared)."""
    return make_tiny_cached(tiny_cache_root, arch="qwen2")


@pytest.fixture(scope="session")
def tiny_seq_cls_dir(tiny_cache_root: Path) -> Path:
    """Tiny ``LlamaForSequenceClassification`` (num_labels=1, pad_token_id set): a reward-model stand-in."""
    return make_tiny_cached(tiny_cache_root, arch="llama", seq_cls=True)
