"""Shared fixtures of the serve tests: a loaded tiny model and LoRA adapters over it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two PEFT LoRA adapters with random (non-zero) weights over the tiny llama, saved to disk."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    root = tmp_path_factory.mktemp("adapters")
    for i, name in enumerate(("a1", "a2")):
        torch.manual_seed(100 + i)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        peft = get_peft_model(base, cfg)
        with torch.no_grad():  # big enough to change greedy decoding from the first token
            for n, p in peft.named_parameters():
                if "lora_B" in n:
                    p.mul_(20)
        peft.save_pretrained(root / name)
        out[name] = root / name
    return out
