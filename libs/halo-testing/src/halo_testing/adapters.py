"""LoRA adapters for tests: ``adapter_factory(out_dir, seed, rank=4)`` writes a PEFT adapter for the tiny Llama.

The adapter has random A *and* B (``init_lora_weights=False``, B scaled up), so it moves greedy decoding of
the tiny model from the first token on — a test that loads it can tell base and adapter apart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def make_lora_adapter(base_dir: Path, out: Path, seed: int, rank: int = 4) -> Path:
    """Write a LoRA adapter for the model in ``base_dir`` to ``out`` and return ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "o_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(20.0)
    peft.save_pretrained(out)
    return out


@pytest.fixture
def adapter_factory(tiny_model_dir: Path) -> Callable[..., Path]:
    """``adapter_factory(out_dir, seed, rank=4)`` writes a LoRA adapter for the tiny Llama."""
    return lambda out, seed, rank=4: make_lora_adapter(tiny_model_dir, out, seed, rank)
