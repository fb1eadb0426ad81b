"""DPO recipe: direct preference optimisation with the sigmoid, IPO, hinge, KTO-pair, RPO and cDPO losses,
against a frozen reference model, the base with the adapter disabled, or no reference (``reference_free``).

The losses are :func:`~..components.losses.dpo_loss` (written from each paper's formula and tested on
hand-computed values); the trainer is :class:`~..components.preference.PreferenceTrainer`.
"""

from __future__ import annotations

from typing import Any

from halo_schemas.training import DPOSpec, RenderedSample, TrainSpecBase
from halo_training.tokenize import encode_pairs  # noqa: F401  (rm.py imports it from here)

from halo_trainer_torch.core.components.data import DataError, TrainingData
from halo_trainer_torch.core.components.losses import PreferenceLossOutput, dpo_loss
from halo_trainer_torch.core.components.model import (
    ResolvedSettings,
    apply_finetune,
    load_base_model,
    load_tokenizer,
    resolve_model_path,
)
from halo_trainer_torch.core.components.session import (
    JobContext,
    RecipeResult,
    make_callback,
    prepare_model_files,
    samples_before,
    train_and_export,
    training_kwargs,
)
from halo_trainer_torch.core.components.tokenize import PreferenceEncoder, render_pair

METHOD = "dpo"
TASK = "causal"


def preview(spec: TrainSpecBase, tokenizer: Any, data: TrainingData, num_samples: int) -> list[RenderedSample]:
    enc = PreferenceEncoder(tokenizer, spec.max_length)
    out: list[RenderedSample] = []
    for r in data.train[:num_samples]:
        e = enc.encode(r.record)
        if e is not None:
            out += render_pair(tokenizer, e, r.source)
    return out


def pair_datasets(ctx: JobContext, tok: Any) -> tuple[Any, Any, dict[str, int]]:
    from datasets import Dataset

    rows, counts = encode_pairs(tok, ctx.data.train, ctx.spec.max_length)
    if not rows:
        raise DataError([f"{ctx.data.files[0].location}: every pair's prompt fills max_length={ctx.spec.max_length}"],
                        param="max_length")
    eval_rows, _ = encode_pairs(tok, ctx.data.eval, ctx.spec.max_length) if ctx.has_eval else ([], {})
    return Dataset.from_list(rows), (Dataset.from_list(eval_rows) if eval_rows else None), counts


def reference_mode(spec: DPOSpec) -> str:
    """none (reference-free), adapter (disable the adapter: base = reference) or model (separate copy)."""
    if spec.reference_free:
        return "none"
    # PiSSA rewrites the base weights (residual), so disabling its adapter does not give the base model back.
    if spec.ref_model is not None or spec.finetune in ("full", "pissa"):
        return "model"
    return "adapter"


def load_reference(spec: DPOSpec, resolved: ResolvedSettings) -> Any:
    path = resolve_model_path(spec.ref_model) if spec.ref_model else resolved.model_path
    # The reference never trains: load it in the compute dtype, never quantised or adapted.
    frozen = spec.model_copy(update={"finetune": "lora"})
    ref_resolved = ResolvedSettings(**{**resolved.to_dict(), "load_dtype": resolved.dtype})
    return load_base_model(frozen, ref_resolved, TASK, path=path)


def objective_for(spec: DPOSpec) -> Any:
    import torch

    def objective(c: Any, r: Any, rc: Any, rr: Any, lc: Any, lr: Any) -> PreferenceLossOutput:
        if rc is None:  # reference-free: a uniform reference contributes log-prob 0
            rc, rr = torch.zeros_like(c), torch.zeros_like(r)
        return dpo_loss(c, r, rc, rr, loss_type=spec.loss_type, beta=spec.beta,
                        label_smoothing=spec.label_smoothing, rpo_alpha=spec.rpo_alpha, chosen_lengths=lc)

    return objective


def train(ctx: JobContext) -> RecipeResult:
    from transformers import TrainingArguments

    from halo_trainer_torch.core.components.preference import PreferenceTrainer

    spec: DPOSpec = ctx.spec  # type: ignore[assignment]
    tok = load_tokenizer(ctx.resolved.model_path, spec.trust_remote_code)
    train_ds, eval_ds, counts = pair_datasets(ctx, tok)
    model = load_base_model(spec, ctx.resolved, TASK)
    before = samples_before(ctx, model, tok)
    model = apply_finetune(model, spec, ctx.resolved, TASK)
    prepare_model_files(ctx, model)
    mode = reference_mode(spec)
    ref = load_reference(spec, ctx.resolved) if mode == "model" else None
    callback = make_callback(ctx)
    trainer = PreferenceTrainer(
        model=model, args=TrainingArguments(**training_kwargs(ctx)), train_dataset=train_ds, eval_dataset=eval_ds,
        tokenizer=tok, objective=objective_for(spec), reference=mode, ref_model=ref, callbacks=[callback],
        disable_dropout=spec.disable_dropout, share_prompt=spec.share_prompt, max_length=spec.max_length,
        precompute_reference=spec.precompute_ref_log_probs,
    )

    def extras(_t: Any, _e: dict[str, float]) -> dict[str, Any]:
        return {**counts, "batch_layout": trainer.batch_layout, "loss_type": spec.loss_type, "beta": spec.beta, "reference": mode,
                **_last_logged(ctx, ("reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected"))}

    prompts = [len(x) for x in train_ds["prompt_ids"]]
    lengths = [p + len(x) for k in ("chosen_ids", "rejected_ids") for p, x in zip(prompts, train_ds[k], strict=True)]
    # A precomputed reference runs once, outside the steps: its forward is not part of a step's model FLOPs.
    reference_in_step = mode != "none" and not spec.precompute_ref_log_probs
    return train_and_export(ctx, trainer, callback, model, tok, before=before, extras=extras,
                            attention_lengths=lengths, extra_forward_passes=1.0 if reference_in_step else 0.0)


def _last_logged(ctx: JobContext, keys: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in ctx.run.read_metrics():
        for k in keys:
            if k in row:
                out[k] = row[k]
    return out
