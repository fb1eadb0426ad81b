"""SFT recipe: supervised finetuning on text, prompt/completion or chat records.

Records are tokenized by :class:`~..components.tokenize.SFTEncoder` (assistant-only / completion-only
labels by default), packed best-fit-decreasing into rows of ``max_length`` tokens with per-record position
ids (no padding, no cross-record attention), and trained with TRL's ``SFTTrainer`` (fused, chunked LM-head
loss) under the shared hooks: metrics, rate-limited events, atomic checkpoints, cancel, resume.
"""

from __future__ import annotations

from typing import Any

from halo_schemas.training import RenderedSample, SFTSpec

from halo_trainer_torch.core.components.batching import SFTCollator, build_sft_dataset
from halo_trainer_torch.core.components.data import DataError, SourcedRecord, TrainingData
from halo_trainer_torch.core.components.hooks import HaloTrainerMixin
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
from halo_trainer_torch.core.components.tokenize import EncodedSFT, SFTEncoder, render_sft

METHOD = "sft"
TASK = "causal"


def encoder(spec: SFTSpec, tokenizer: Any, fmt: str) -> SFTEncoder:
    return SFTEncoder(tokenizer, fmt, spec.max_length, completion_only=spec.completion_only_loss,
                      text_field=spec.data.text_field)


def encode_records(enc: SFTEncoder, records: list[SourcedRecord]) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Encode records; drop those left with no trained token. Returns (rows, counts)."""
    rows, dropped, truncated = [], 0, 0
    for rec in records:
        e: EncodedSFT = enc.encode(rec.record)
        truncated += e.truncated
        if e.num_trained == 0:
            dropped += 1
            continue
        rows.append({"input_ids": e.input_ids, "labels": e.labels})
    return rows, {"records": len(rows), "dropped_records": dropped, "truncated_records": truncated}


def preview(spec: SFTSpec, tokenizer: Any, data: TrainingData, num_samples: int) -> list[RenderedSample]:
    enc = encoder(spec, tokenizer, data.format)
    return [render_sft(tokenizer, enc.encode(r.record), r.source) for r in data.train[:num_samples]]


def _trainer_cls() -> type:
    """``HaloTrainerMixin`` + TRL's ``SFTTrainer`` (built lazily: importing TRL costs seconds)."""
    from trl import SFTTrainer

    return type("HaloSFTTrainer", (HaloTrainerMixin, SFTTrainer), {})


def train(ctx: JobContext) -> RecipeResult:
    from trl import SFTConfig

    spec: SFTSpec = ctx.spec  # type: ignore[assignment]
    tok = load_tokenizer(ctx.resolved.model_path, spec.trust_remote_code)
    enc = encoder(spec, tok, ctx.data.format)
    train_rows, counts = encode_records(enc, ctx.data.train)
    if not train_rows:
        raise DataError([f"{ctx.data.files[0].location}: no record has a trained token after truncation to "
                         f"max_length={spec.max_length}"], param="max_length")
    eval_rows, eval_counts = encode_records(enc, ctx.data.eval) if ctx.has_eval else ([], {})
    train_ds = build_sft_dataset(train_rows, packing=spec.packing, max_length=spec.max_length)
    eval_ds = build_sft_dataset(eval_rows, packing=spec.packing, max_length=spec.max_length) if eval_rows else None

    model = load_base_model(spec, ctx.resolved, TASK)
    before = samples_before(ctx, model, tok)
    model = apply_finetune(model, spec, ctx.resolved, TASK)
    prepare_model_files(ctx, model)

    args = SFTConfig(
        **training_kwargs(ctx),
        max_length=None,  # records are already truncated (and packed) by the encoder
        packing=False,
        padding_free=False,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    callback = make_callback(ctx)
    trainer = _trainer_cls()(
        model=model, args=args, data_collator=SFTCollator(tok.pad_token_id, packed=spec.packing),
        train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok, callbacks=[callback],
    )
    real = sum(len(r["input_ids"]) for r in train_rows)

    def extras(_trainer: Any, _eval: dict[str, float]) -> dict[str, Any]:
        out: dict[str, Any] = {**counts, "packing": spec.packing, "rows": len(train_ds)}
        if spec.packing:
            out["packing_efficiency"] = real / (len(train_ds) * spec.max_length)
        if eval_counts:
            out["eval_records"] = eval_counts["records"]
        return out

    # Packed or not, a token attends within its own record (block-diagonal mask / padding masked out).
    return train_and_export(ctx, trainer, callback, model, tok, before=before, extras=extras,
                            attention_lengths=[len(r["input_ids"]) for r in train_rows])
