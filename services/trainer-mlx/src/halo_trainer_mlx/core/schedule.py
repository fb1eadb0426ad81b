"""Learning-rate schedules and step arithmetic, with the formulas of transformers' schedulers (so an MLX run and a
trainer-torch run of the same spec follow the same learning rate at every optimizer step)."""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def lr_factor(kind: str, step: int, total_steps: int, warmup: int) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based)."""
    if kind != "constant" and step < warmup:
        return step / max(1, warmup)
    if kind in ("constant", "constant_with_warmup"):
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if kind == "linear":
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    if kind == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown lr_scheduler {kind!r}")


def total_steps(*, micro_batches_per_epoch: int, grad_accum: int, epochs: float, max_steps: int | None) -> tuple[int, int]:
    """(optimizer steps per epoch, planned optimizer steps). An epoch's last step may accumulate fewer batches."""
    per_epoch = max(1, math.ceil(micro_batches_per_epoch / grad_accum))
    return per_epoch, (max_steps if max_steps else max(1, math.ceil(epochs * per_epoch)))
