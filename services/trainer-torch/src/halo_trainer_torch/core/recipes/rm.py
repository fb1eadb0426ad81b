"""Reward-model recipe: a Bradley-Terry model on a sequence-classification head (one logit), trained from
chosen/rejected pairs with reward centering (``center_rewards_coefficient``), via TRL's ``RewardTrainer``.

The export (final/ or adapter/) carries a ``verifier.json`` so it can be loaded as a learned verifier
(:mod:`..components.reward_verifier`), with the reward mean/std on held-out (or training) pairs for
normalisation and the pairwise accuracy it reached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from halo_schemas.training import RenderedSample, RewardModelSpec, TrainSpecBase

from halo_trainer_torch.core.components.data import DataError, SourcedRecord, TrainingData
from halo_trainer_torch.core.components.hooks import HaloTrainerMixin
from halo_trainer_torch.core.components.model import (
    apply_finetune,
    load_base_model,
    load_tokenizer,
    write_verifier_manifest,
)
from halo_trainer_torch.core.components.session import (
    JobContext,
    RecipeResult,
    make_callback,
    train_and_export,
    training_kwargs,
)
from halo_trainer_torch.core.components.tokenize import PreferenceEncoder, render_pair

METHOD = "rm"
TASK = "seq_cls"


def encode_pairs(tokenizer: Any, records: list[SourcedRecord], max_length: int) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Full chosen / rejected sequences (prompt + completion) for scoring."""
    enc = PreferenceEncoder(tokenizer, max_length)
    rows, dropped = [], 0
    for rec in records:
        e = enc.encode(rec.record)
        if e is None:
            dropped += 1
            continue
        rows.append({"chosen_ids": e.prompt_ids + e.chosen_ids, "rejected_ids": e.prompt_ids + e.rejected_ids})
    return rows, {"records": len(rows), "dropped_records": dropped}


def preview(spec: TrainSpecBase, tokenizer: Any, data: TrainingData, num_samples: int) -> list[RenderedSample]:
    enc = PreferenceEncoder(tokenizer, spec.max_length)
    out: list[RenderedSample] = []
    for r in data.train[:num_samples]:
        e = enc.encode(r.record)
        if e is not None:
            # The reward model reads the whole sequence; its score is the head's output at the last token.
            for s in render_pair(tokenizer, e, r.source):
                segs = [seg.model_copy(update={"trained": True}) for seg in s.segments]
                out.append(s.model_copy(update={"segments": segs, "num_trained_tokens": s.num_tokens}))
    return out


def _trainer_cls() -> type:
    from trl import RewardTrainer

    return type("HaloRewardTrainer", (HaloTrainerMixin, RewardTrainer), {})


def score_pairs(model: Any, tokenizer: Any, rows: list[dict[str, list[int]]], batch_size: int = 16) -> tuple[list[float], list[float]]:
    """Rewards of chosen and rejected sequences (right-padded batches; the head reads the last real token)."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    chosen: list[float] = []
    rejected: list[float] = []
    for key, out in (("chosen_ids", chosen), ("rejected_ids", rejected)):
        seqs = [r[key] for r in rows]
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i: i + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, s in enumerate(chunk):
                ids[j, : len(s)] = torch.tensor(s)
                mask[j, : len(s)] = 1
            with torch.no_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out.extend(float(x) for x in logits.squeeze(-1).float().cpu())
    return chosen, rejected


def train(ctx: JobContext) -> RecipeResult:
    from datasets import Dataset
    from trl import RewardConfig

    spec: RewardModelSpec = ctx.spec  # type: ignore[assignment]
    tok = load_tokenizer(ctx.resolved.model_path, spec.trust_remote_code)
    rows, counts = encode_pairs(tok, ctx.data.train, spec.max_length)
    if not rows:
        raise DataError([f"{ctx.data.files[0].location}: every pair's prompt fills max_length={spec.max_length}"],
                        param="max_length")
    eval_rows, _ = encode_pairs(tok, ctx.data.eval, spec.max_length) if ctx.has_eval else ([], {})
    model = load_base_model(spec, ctx.resolved, TASK)
    model.config.pad_token_id = tok.pad_token_id
    model = apply_finetune(model, spec, ctx.resolved, TASK)
    args = RewardConfig(**training_kwargs(ctx), max_length=None, disable_dropout=True,
                        center_rewards_coefficient=spec.center_rewards_coefficient)
    callback = make_callback(ctx)
    trainer = _trainer_cls()(
        model=model, args=args, train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None, processing_class=tok, callbacks=[callback],
    )

    def after_export(t: Any, outputs: dict[str, str]) -> dict[str, Any]:
        held_out = bool(eval_rows)
        sample = (eval_rows if held_out else rows)[:512]
        unwrapped = t.accelerator.unwrap_model(t.model)
        c, r = score_pairs(unwrapped, tok, sample, batch_size=spec.batch_size)
        every = c + r
        mean = sum(every) / len(every)
        std = (sum((x - mean) ** 2 for x in every) / max(1, len(every) - 1)) ** 0.5
        acc = sum(1 for a, b in zip(c, r, strict=True) if a > b) / len(c)
        stats = {"mean": mean, "std": std, "pairwise_accuracy": acc, "pairs": float(len(c)),
                 "held_out": float(held_out)}
        fmt = "peft-seq-cls" if "adapter" in outputs else "hf-seq-cls"
        target = Path(outputs.get("adapter") or outputs["final"])
        manifest = write_verifier_manifest(target, base_model=ctx.resolved.model_path, fmt=fmt, stats=stats)
        ctx.reporter.artifact("verifier", "reward-model", str(manifest))
        key = "heldout_pairwise_accuracy" if held_out else "train_pairwise_accuracy"
        return {**counts, key: acc, "reward_mean": mean, "reward_std": std, "verifier": str(manifest)}

    return train_and_export(ctx, trainer, callback, model, tok, after_export=after_export)
