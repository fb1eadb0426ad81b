"""Resumable checkpoints of an MLX run, in the run directory's layout (``checkpoints/checkpoint-<step>/``).

A checkpoint holds the trainable weights (``weights.safetensors``, mlx-lm names), the optimizer state
(``optimizer.safetensors``) and ``trainer_state.json`` (global step, tokens, early-stopping history). It is
written under ``.staging`` and renamed into place complete (``trainer_state.json`` last), so a ``kill -9`` at any
instant leaves the previous checkpoint as the newest complete one.

A probed checkpoint (spec ``probe``) also holds its weights in a form the eval service loads, written by the
probe (``extra``) before ``trainer_state.json``: a PEFT adapter, or an HF model directory for full finetuning.
The last checkpoint that passed its probe is kept from pruning (``protect``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from halo_training.rundir import RunDir, write_json_atomic

WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "trainer_state.json"


def save_checkpoint(run: RunDir, step: int, model: Any, optimizer: Any, state: dict[str, Any], keep: int, *,
                    extra: Callable[[Path], None] | None = None, protect: Path | None = None) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    staged = run.staging / f"checkpoint-{step}"
    staged.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(staged / WEIGHTS), dict(tree_flatten(model.trainable_parameters())))
    opt = {k: v for k, v in tree_flatten(optimizer.state) if isinstance(v, mx.array)}
    mx.save_safetensors(str(staged / OPTIMIZER), opt)
    if extra is not None:
        extra(staged)
    write_json_atomic(staged / STATE, {"global_step": step, **state})
    final = run.finalize_checkpoint(staged)
    if protect is None:
        run.prune_checkpoints(keep)
    else:
        _prune_except(run, keep, protect)
    return final


def _prune_except(run: RunDir, keep: int, protect: Path) -> None:
    """:meth:`RunDir.prune_checkpoints`, keeping ``protect`` (the last checkpoint that passed its probe) too."""
    for step in run.checkpoint_steps()[:-keep] if keep > 0 else run.checkpoint_steps():
        p = run.checkpoints / f"checkpoint-{step}"
        if p.resolve() == protect.resolve():
            continue
        trash = run.checkpoints / f".trash-checkpoint-{step}-{os.getpid()}"
        os.replace(p, trash)  # renamed first: a crash mid-delete leaves no half-deleted dir that looks complete
        shutil.rmtree(trash, ignore_errors=True)


def load_weights(path: Path, model: Any) -> None:
    """Load a checkpoint's trainable weights into ``model`` (the optimizer state is left alone)."""
    import mlx.core as mx

    model.load_weights(list(mx.load(str(path / WEIGHTS)).items()), strict=False)


def load_checkpoint(path: Path, model: Any, optimizer: Any) -> dict[str, Any]:
    """Restore weights and optimizer state; returns trainer_state.json."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    load_weights(path, model)
    opt = mx.load(str(path / OPTIMIZER))
    if opt:
        optimizer.state = tree_unflatten(list(opt.items()))
    return json.loads((path / STATE).read_text())
