"""Model FLOPs and the device peak for a torch run (the formula and the peak table: :mod:`halo_training.flops`).

Usage (``train_and_export`` does this for every recipe)::

    per_token, peak, source = run_flops(model, ctx, attention_lengths=lengths, extra_forward_passes=1)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from halo_common.paths import default_home
from halo_training.flops import ModelShape, attention_context, peak_flops, training_flops_per_token

from halo_trainer_torch.core.components.model import is_peft

log = logging.getLogger("halo_trainer_torch")

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def torch_matmul_flops(device: str, dtype: str, *, seconds: float = 0.25, rounds: int = 3) -> float:
    """Best FLOP/s of square dense matmuls in ``dtype`` on ``device`` over ``rounds`` timed windows.
    1024^2 on a CPU (fits the caches of a small host), 8192^2 on an accelerator."""
    import torch

    dt = getattr(torch, dtype)
    n = 1024 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elif device == "mps":
            torch.mps.synchronize()

    torch.matmul(a, b)  # warm-up (kernel selection, page faults)
    sync()
    best = 0.0
    for _ in range(rounds):
        count, t0 = 0, time.perf_counter()
        while True:
            torch.matmul(a, b)
            count += 1
            sync()
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
        best = max(best, 2.0 * n**3 * count / elapsed)
    return best


def run_flops(model: Any, ctx: Any, *, attention_lengths: Sequence[int] | None = None,
              extra_forward_passes: float = 0.0) -> tuple[float | None, float | None, str | None]:
    """(model FLOPs per token, peak FLOP/s of all devices of the run, peak source); Nones when the model's
    shape is unknown. ``attention_lengths``: lengths of the sequences tokens attend within (default:
    ``max_length``); ``extra_forward_passes``: forward-only passes per token (a reference model)."""
    import torch

    base = model.get_base_model() if is_peft(model) else model
    shape = ModelShape.from_config(getattr(base, "config", None) or {})
    if shape is None:
        return None, None, None
    context = attention_context(attention_lengths) if attention_lengths else float(ctx.spec.max_length)
    adapter = None
    if is_peft(model):
        adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_token = training_flops_per_token(shape, context, adapter_parameters=adapter,
                                         extra_forward_passes=extra_forward_passes)
    dtype = _DTYPES.get(ctx.resolved.dtype, "float32")
    if torch.cuda.is_available() and not ctx.resolved.use_cpu:
        kind, device, name = "gpu", "cuda", torch.cuda.get_device_name()
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() \
            and not ctx.resolved.use_cpu:
        kind, device, name = "mps", "mps", "Apple MPS"
    else:
        kind, device, name = "cpu", "cpu", "cpu"
    threads = torch.get_num_threads() if kind == "cpu" else None
    try:
        peak, source = peak_flops(name, dtype, measure=lambda: torch_matmul_flops(device, dtype), home=default_home(),
                                  device_kind=kind, threads=threads)
    except Exception as exc:  # a failed measurement must not fail the run: MFU is then absent
        log.warning("peak FLOP/s measurement failed: %s", exc)
        return per_token, None, None
    devices = int(os.environ.get("WORLD_SIZE", "1")) if kind != "cpu" else 1
    return per_token, (peak * devices if peak else None), source
