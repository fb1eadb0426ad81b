"""SFT on MLX: full, LoRA or DoRA; completion-only loss; packing; gradient accumulation.

Records are encoded by :class:`halo_training.tokenize.SFTEncoder` — the same ids and loss masks as trainer-torch —
then packed (best-fit decreasing, per-record positions, block-diagonal attention) or padded, and trained by
:func:`halo_trainer_mlx.core.loop.train_loop`.
"""

from __future__ import annotations

from typing import Any

from halo_schemas.training import RenderedSample, SFTSpec
from halo_training.data import DataError, SourcedRecord, TrainingData
from halo_training.runs import RecipeResult
from halo_training.tokenize import SFTEncoder, render_sft

from halo_trainer_mlx.core.batching import Row, epoch_order, make_batches, pack_bfd, unpacked
from halo_trainer_mlx.core.context import JobContext
from halo_trainer_mlx.core.export import export_model
from halo_trainer_mlx.core.loop import Batch, train_loop
from halo_trainer_mlx.core.model import (
    IGNORE,
    apply_finetune,
    enable_gradient_checkpointing,
    enable_packing,
    forward,
    has_plain_head,
    hidden_states,
    lm_head,
    load_model,
    load_tokenizer,
)
from halo_trainer_mlx.core.samples import before_after, samples_before


def encoder(spec: SFTSpec, tokenizer: Any, fmt: str) -> SFTEncoder:
    return SFTEncoder(tokenizer, fmt, spec.max_length, completion_only=spec.completion_only_loss,
                      text_field=spec.data.text_field)


def encode_records(enc: SFTEncoder, records: list[SourcedRecord]) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    rows, truncated, empty = [], 0, 0
    for rec in records:
        e = enc.encode(rec.record)
        truncated += int(e.truncated)
        if e.num_trained == 0:
            empty += 1
            continue
        rows.append({"input_ids": e.input_ids, "labels": e.labels})
    return rows, {"records": len(records), "truncated_records": truncated, "records_without_trained_tokens": empty}


def preview(spec: SFTSpec, tokenizer: Any, data: TrainingData, num_samples: int) -> list[RenderedSample]:
    enc = encoder(spec, tokenizer, data.format)
    return [render_sft(tokenizer, enc.encode(r.record), r.source) for r in data.train[:num_samples]]


def token_loss(model: Any, batch: Batch) -> tuple[Any, dict[str, Any]]:
    """Summed next-token cross entropy over the batch's trained labels."""
    import mlx.core as mx
    import mlx.nn as nn

    a = batch.arrays
    if "sel" in a and has_plain_head(model):
        # Only the positions that predict a trained label go through the LM head and the cross entropy
        # (completion-only loss trains a fraction of the tokens; the vocabulary projection is the widest matmul).
        hidden = hidden_states(model, a["ids"], a.get("positions"), a.get("segments"))
        picked = hidden.reshape(-1, hidden.shape[-1])[a["sel"]]
        targets = a["sel_labels"]
        mask = targets != IGNORE
        ce = nn.losses.cross_entropy(lm_head(model, picked).astype(mx.float32), mx.where(mask, targets, 0))
        return (ce * mask).sum(), {}
    logits = forward(model, a["ids"], a.get("positions"), a.get("segments"))
    targets = a["labels"][:, 1:]
    mask = targets != IGNORE
    ce = nn.losses.cross_entropy(logits[:, :-1].astype(mx.float32), mx.where(mask, targets, 0))
    return (ce * mask).sum(), {}


class SFTTask:
    def __init__(self, rows: list[Row], eval_rows: list[Row], *, batch_size: int, pad_id: int, packed: bool,
                 seed: int) -> None:
        self.rows, self.batch_size, self.pad_id, self.packed, self.seed = rows, batch_size, pad_id, packed, seed
        order = list(range(len(eval_rows)))
        self._eval = make_batches(eval_rows, batch_size, pad_id, packed, order) if eval_rows else []

    def epoch_batches(self, epoch: int) -> list[Batch]:
        return make_batches(self.rows, self.batch_size, self.pad_id, self.packed,
                            epoch_order(len(self.rows), self.seed, epoch))

    def loss(self, model: Any, batch: Batch) -> tuple[Any, dict[str, Any]]:
        return token_loss(model, batch)

    def eval_batches(self) -> list[Batch]:
        return self._eval


def train(ctx: JobContext) -> RecipeResult:
    import mlx.core as mx

    spec: SFTSpec = ctx.spec  # type: ignore[assignment]
    tok = load_tokenizer(ctx.resolved.model_path)
    enc = encoder(spec, tok, ctx.data.format)
    train_rows, counts = encode_records(enc, ctx.data.train)
    if not train_rows:
        raise DataError([f"{ctx.data.files[0].location}: no record has a trained token after truncation to "
                         f"max_length={spec.max_length}"], param="max_length")
    eval_rows, _ = encode_records(enc, ctx.data.eval) if ctx.has_eval else ([], {})
    rows = pack_bfd(train_rows, spec.max_length) if spec.packing else unpacked(train_rows)
    erows = (pack_bfd(eval_rows, spec.max_length) if spec.packing else unpacked(eval_rows)) if eval_rows else []

    mx.random.seed(spec.seed)  # adapter initialisation and dropout
    model = load_model(ctx.resolved.model_path, ctx.resolved.dtype)
    if spec.packing:
        enable_packing(model)
    before = samples_before(ctx, model, tok)
    adapter_config = apply_finetune(model, spec)
    if ctx.resolved.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    task = SFTTask(rows, erows, batch_size=spec.batch_size, pad_id=tok.pad_token_id, packed=spec.packing,
                   seed=spec.seed)
    result = train_loop(ctx, model, task)
    real = sum(len(r["input_ids"]) for r in train_rows)
    result.extras.update({**counts, "packing": spec.packing, "rows": len(rows)})
    if spec.packing:
        result.extras["packing_efficiency"] = real / (len(rows) * spec.max_length)
    if result.state != "succeeded":
        return result
    model.eval()
    samples = before_after(ctx, model, tok, before)
    if samples is not None:
        result.extras["samples"] = samples
    result.outputs = export_model(ctx, model, adapter_config)
    return result
