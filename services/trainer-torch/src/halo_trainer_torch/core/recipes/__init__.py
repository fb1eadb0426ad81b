"""One self-contained recipe per method, all sharing :mod:`halo_trainer_torch.core.components`.

Each recipe module exposes ``METHOD``, ``TASK`` ("causal" | "seq_cls"), ``train(ctx) -> RecipeResult`` and
``preview(spec, tokenizer, data, n) -> list[RenderedSample]``. A new method (GRPO, RAFT) adds a module and
one line here.
"""

from __future__ import annotations

from types import ModuleType

from halo_trainer_torch.core.recipes import dpo, grpo, orpo, raft, rm, sft

RECIPES: dict[str, ModuleType] = {m.METHOD: m for m in (sft, dpo, orpo, rm, grpo, raft)}
