"""trainer-mlx recipes by method token: each has ``train(ctx) -> RecipeResult`` and ``preview(...)``."""

from __future__ import annotations

from types import ModuleType


def recipe(method: str) -> ModuleType:
    from halo_trainer_mlx.core.recipes import grpo, preference, raft, rm, sft

    return {"sft": sft, "dpo": preference, "orpo": preference, "rm": rm, "grpo": grpo, "raft": raft}[method]
