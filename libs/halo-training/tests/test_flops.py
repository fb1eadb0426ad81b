"""Model FLOPs per token against a hand count for the tiny model's shape, the peak table and the peak cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from halo_training.flops import (
    ModelShape,
    attention_context,
    gpu_peak_flops,
    measured_peak_flops,
    mfu,
    peak_cache_file,
    peak_flops,
    training_flops_per_token,
)

# The halo-models "tiny" preset as its config.json has it (Llama: gated MLP).
TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 512, "hidden_act": "silu"}

# Hand count. Per layer: q and o 64x64 each (4096 + 4096), k and v 64x(2 kv heads x 16) each (2048 + 2048),
# MLP gate/up/down 3 x 64x128 (24576): 36864; two layers 73728; LM head 64x512 = 32768. N = 106496.
N = 106_496


def test_matmul_parameters_of_the_tiny_shape() -> None:
    shape = ModelShape.from_config(TINY)
    assert shape is not None and shape.head_dim == 16 and shape.attention_width == 64
    assert shape.matmul_parameters() == N


def test_full_finetuning_is_6n_plus_attention() -> None:
    shape = ModelShape.from_config(TINY)
    # attention: 12 x layers (2) x d_attn (64) x T (10) = 15360
    assert training_flops_per_token(shape, 10.0) == 6 * N + 15_360 == 654_336


def test_lora_counts_the_frozen_forward_and_the_input_gradients_only() -> None:
    shape = ModelShape.from_config(TINY)
    # LoRA r=8 on q (8x64 + 64x8 = 1024) and v (8x64 + 32x8 = 768): A = 1792 adapter weights.
    # 2N forward + 2N input gradients (no frozen weight gradients) + 6A + attention.
    assert training_flops_per_token(shape, 10.0, adapter_parameters=1792) == 4 * N + 6 * 1792 + 15_360 == 452_096


def test_a_reference_forward_adds_2n_and_the_forward_attention() -> None:
    shape = ModelShape.from_config(TINY)
    with_ref = training_flops_per_token(shape, 10.0, adapter_parameters=1792, extra_forward_passes=1)
    assert with_ref - 452_096 == 2 * N + 4 * 2 * 64 * 10


def test_attention_context_is_token_weighted() -> None:
    # 2 tokens attend within 2, 6 within 6: (2*2 + 6*6) / 8 = 5
    assert attention_context([2, 6]) == 5.0
    assert attention_context([]) == 0.0


def test_unknown_config_has_no_shape() -> None:
    assert ModelShape.from_config({"n_embd": 64}) is None


def test_gpu_table_prefers_the_variant() -> None:
    assert gpu_peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "float32") == 19.5e12
    assert gpu_peak_flops("Some Future GPU", "bfloat16") is None
    assert gpu_peak_flops("Tesla V100-SXM2-16GB", "bfloat16") is None  # no bf16 on Volta


def test_measured_peak_is_cached_per_key(tmp_path: Path) -> None:
    calls: list[int] = []

    def measure() -> float:
        calls.append(1)
        return 5e10

    cache = peak_cache_file(tmp_path)
    assert measured_peak_flops("host|cpu|float32", measure, cache) == 5e10
    assert measured_peak_flops("host|cpu|float32", measure, cache) == 5e10
    assert len(calls) == 1
    assert json.loads(cache.read_text())["host|cpu|float32"]["flops"] == 5e10
    measured_peak_flops("host|cpu|bfloat16", lambda: 7e10, cache)  # another dtype: its own entry
    assert set(json.loads(cache.read_text())) == {"host|cpu|float32", "host|cpu|bfloat16"}


def test_peak_prefers_the_table_and_falls_back_to_a_measurement(tmp_path: Path) -> None:
    assert peak_flops("NVIDIA H200", "bfloat16", measure=None, home=tmp_path, device_kind="gpu") == (
        989.4e12, "table:NVIDIA H200")
    peak, source = peak_flops("cpu", "float32", measure=lambda: 4e10, home=tmp_path, threads=2)
    assert (peak, source) == (4e10, "measured:float32 matmul")
    assert peak_flops("cpu", "float32", measure=None, home=tmp_path) == (None, None)


def test_mfu() -> None:
    assert mfu(2e10, 4e10) == pytest.approx(0.5)
    assert mfu(None, 4e10) is None and mfu(2e10, None) is None
