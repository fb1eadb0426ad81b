"""Model FLOPs of a real model and MFU in the summary of a real tiny training run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from halo_schemas.jobs import JobState
from halo_trainer_torch.core.runner import run_job
from halo_training.flops import ModelShape, peak_cache_file
from transformers import AutoModelForCausalLM

from .test_recipes import _spec


def test_shape_counts_every_matmul_weight_of_the_tiny_model(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    shape = ModelShape.from_config(model.config)
    assert shape is not None and shape.matmul_parameters() == linear


def _summary(sft_file: Path, run: Path, finetune: str) -> dict[str, Any]:
    s = run_job("sft", _spec(sft_file, finetune=finetune, max_steps=3), run)
    assert s.state == JobState.SUCCEEDED, s.failure_reason
    return json.loads((run / "training_summary.json").read_text())


def test_run_summary_has_model_flops_and_mfu(sft_file: Path, tmp_path: Path, tiny_model_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALO_HOME", str(tmp_path / "home"))
    full = _summary(sft_file, tmp_path / "full", "full")
    lora = _summary(sft_file, tmp_path / "lora", "lora")
    for summary in (full, lora):
        assert summary["model_flops_per_token"] > 0
        # Achieved = FLOPs per token x tokens of the attempt / its loop time (tokens_per_second's ratio).
        assert summary["model_flops_per_second"] == pytest.approx(
            summary["model_flops_per_token"] * summary["tokens_per_second"], rel=1e-6)
        assert summary["peak_flops_per_second"] > 0 and summary["peak_flops_source"]
        assert summary["mfu"] == pytest.approx(summary["model_flops_per_second"] / summary["peak_flops_per_second"])
    if full["peak_flops_source"].startswith("measured:"):  # a CPU (or a device not in the table): cached per host
        assert peak_cache_file(tmp_path / "home").exists()
    # Same data, so the same attention term: LoRA trades the frozen weights' gradients (2N) for its own (6A).
    shape = ModelShape.from_config(AutoModelForCausalLM.from_pretrained(tiny_model_dir).config)
    n, a = shape.matmul_parameters(), lora["trainable_parameters"]
    assert full["trainable_parameters"] == full["total_parameters"] and 0 < a < n
    assert lora["model_flops_per_token"] == pytest.approx(full["model_flops_per_token"] - 2 * n + 6 * a)
