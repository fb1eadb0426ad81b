"""Parity with trainer-torch: the same SFT spec on the same tiny model (same initial weights from the kit's HF
files, same data, seed, float32, full finetuning) gives the same loss curve over 50 optimizer steps.

Each step sees the whole dataset (batch_size >= rows), so the two trainers' different shuffles cannot matter, and
packing is on in both (trainer-torch: TRL's BFD packer with position ids; trainer-mlx: its own BFD packer with
segment masks): with per-record attention the summed loss does not depend on which row a record lands in.

Tolerance: |loss_mlx - loss_torch| <= 1e-3 at every step (measured: ~1.5e-5). Both compute in float32; they differ
only in the order of floating-point sums (matmul kernels, softmax, Adam), so they drift apart by float32 rounding
(~1e-7 relative per operation) compounded over 50 Adam steps. 1e-3 is ~2.5e-4 of the loss and far below what the
loss moves per step (~1e-2 .. 1e-1): a wrong learning rate, warmup, mask, clipping or bias correction would
exceed it within a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TOLERANCE = 1e-3


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sft_loss_curve_matches_trainer_torch(tmp_path: Path, chat_file: Path, arch: str) -> None:
    torch = pytest.importorskip("torch")
    from halo_trainer_mlx.core.runner import run_job as mlx_run
    from halo_trainer_torch.core.runner import run_job as torch_run

    torch.set_num_threads(1)
    spec = {"model": f"tiny://{arch}", "data": {"train": str(chat_file)}, "finetune": "full", "max_steps": 50,
            "batch_size": 16, "learning_rate": 1e-3, "dtype": "float32", "max_length": 128, "packing": True,
            "checkpoint_every_steps": 100, "seed": 7, "lr_scheduler": "cosine", "warmup_ratio": 0.1}
    t = torch_run("sft", {**spec, "backend": "torch"}, tmp_path / "torch")
    m = mlx_run("sft", {**spec, "backend": "mlx"}, tmp_path / "mlx")
    assert t.state == m.state == "succeeded", (t.failure_reason, m.failure_reason)
    lt, lm = _losses(tmp_path / "torch"), _losses(tmp_path / "mlx")
    assert len(lt) == len(lm) == 50
    assert lt[-1] < lt[0] - 1.0  # the curve is not flat: there is something to compare
    worst = max(abs(a - b) for a, b in zip(lt, lm, strict=True))
    assert worst <= TOLERANCE, f"max |loss difference| {worst:.2e} over 50 steps"
    assert t.tokens == m.tokens  # the same tokens were trained
