"""ORPO recipe: odds-ratio preference optimisation — SFT on the chosen completion plus
``beta`` x log sigmoid(log odds(chosen) - log odds(rejected)), with no reference model.

Shares the pair encoding with the DPO recipe and the :class:`~..components.preference.PreferenceTrainer`.
"""

from __future__ import annotations

from typing import Any

from halo_schemas.training import ORPOSpec, RenderedSample, TrainSpecBase

from halo_trainer_torch.core.components.data import TrainingData
from halo_trainer_torch.core.components.losses import PreferenceLossOutput, orpo_loss
from halo_trainer_torch.core.components.model import apply_finetune, load_base_model, load_tokenizer
from halo_trainer_torch.core.components.session import (
    JobContext,
    RecipeResult,
    make_callback,
    prepare_model_files,
    samples_before,
    train_and_export,
    training_kwargs,
)
from halo_trainer_torch.core.recipes import dpo

METHOD = "orpo"
TASK = "causal"


def preview(spec: TrainSpecBase, tokenizer: Any, data: TrainingData, num_samples: int) -> list[RenderedSample]:
    return dpo.preview(spec, tokenizer, data, num_samples)


def objective_for(spec: ORPOSpec) -> Any:
    def objective(c: Any, r: Any, _rc: Any, _rr: Any, lc: Any, lr: Any) -> PreferenceLossOutput:
        return orpo_loss(c, r, lc, lr, beta=spec.beta)

    return objective


def train(ctx: JobContext) -> RecipeResult:
    from transformers import TrainingArguments

    from halo_trainer_torch.core.components.preference import PreferenceTrainer

    spec: ORPOSpec = ctx.spec  # type: ignore[assignment]
    tok = load_tokenizer(ctx.resolved.model_path, spec.trust_remote_code)
    train_ds, eval_ds, counts = dpo.pair_datasets(ctx, tok)
    model = load_base_model(spec, ctx.resolved, TASK)
    before = samples_before(ctx, model, tok)
    model = apply_finetune(model, spec, ctx.resolved, TASK)
    prepare_model_files(ctx, model)
    callback = make_callback(ctx)
    trainer = PreferenceTrainer(
        model=model, args=TrainingArguments(**training_kwargs(ctx)), train_dataset=train_ds, eval_dataset=eval_ds,
        tokenizer=tok, objective=objective_for(spec), reference="none", callbacks=[callback],
        disable_dropout=spec.disable_dropout, share_prompt=spec.share_prompt, max_length=spec.max_length,
    )

    def extras(_t: Any, _e: dict[str, float]) -> dict[str, Any]:
        return {**counts, "batch_layout": trainer.batch_layout, "beta": spec.beta,
                **dpo._last_logged(ctx, ("reward_accuracy", "reward_margin", "log_odds_ratio", "nll"))}

    return train_and_export(ctx, trainer, callback, model, tok, before=before, extras=extras)
