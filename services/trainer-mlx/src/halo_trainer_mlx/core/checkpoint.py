"""Resumable checkpoints of an MLX run, in the run directory's layout (``checkpoints/checkpoint-<step>/``).

A checkpoint holds the trainable weights (``weights.safetensors``, mlx-lm names), the optimizer state
(``optimizer.safetensors``) and ``trainer_state.json`` (global step, tokens, early-stopping history). It is
written under ``.staging`` and renamed into place complete (``trainer_state.json`` last), so a ``kill -9`` at any
instant leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from halo_training.rundir import RunDir, write_json_atomic

WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "trainer_state.json"


def save_checkpoint(run: RunDir, step: int, model: Any, optimizer: Any, state: dict[str, Any], keep: int) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    staged = run.staging / f"checkpoint-{step}"
    staged.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(staged / WEIGHTS), dict(tree_flatten(model.trainable_parameters())))
    opt = {k: v for k, v in tree_flatten(optimizer.state) if isinstance(v, mx.array)}
    mx.save_safetensors(str(staged / OPTIMIZER), opt)
    write_json_atomic(staged / STATE, {"global_step": step, **state})
    final = run.finalize_checkpoint(staged)
    run.prune_checkpoints(keep)
    return final


def load_checkpoint(path: Path, model: Any, optimizer: Any) -> dict[str, Any]:
    """Restore weights and optimizer state; returns trainer_state.json."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    model.load_weights(list(mx.load(str(path / WEIGHTS)).items()), strict=False)
    opt = mx.load(str(path / OPTIMIZER))
    if opt:
        optimizer.state = tree_unflatten(list(opt.items()))
    return json.loads((path / STATE).read_text())
