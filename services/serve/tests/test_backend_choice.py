"""Choosing a serve backend: by format, forced, and ``--backend vllm`` refused with what to do instead."""

from __future__ import annotations

import importlib.util

import pytest
from halo_common.errors import BadRequest, Unprocessable
from halo_serve.core.backends import choose_backend
from halo_serve.core.models import ModelCatalog


def test_formats_pick_their_backend_and_a_forced_one_is_checked() -> None:
    assert choose_backend("gguf") == "llamacpp" and choose_backend("mlx") == "mlx"
    with pytest.raises(BadRequest) as err:
        choose_backend("onnx")
    assert err.value.param == "format"
    with pytest.raises(BadRequest) as err:
        choose_backend("hf", "tensorrt")
    assert err.value.param == "backend" and "known: llamacpp, mlx, transformers" in err.value.message


def test_vllm_is_refused_naming_what_to_do(tiny_model_dir) -> None:
    installed = importlib.util.find_spec("vllm") is not None
    with pytest.raises(Unprocessable) as err:
        choose_backend("hf", "vllm")
    msg = err.value.message
    assert err.value.param == "backend" and "transformers, llamacpp or mlx" in msg
    assert ("vllm serve" in msg) if installed else ("optional extra for CUDA/ROCm" in msg)
    with pytest.raises(Unprocessable):  # the same answer when a model id is registered with it
        ModelCatalog().register("tiny", str(tiny_model_dir), backend="vllm")
