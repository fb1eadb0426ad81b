"""DPO (sigmoid, IPO, hinge, KTO-pair, RPO, cDPO; reference-free, the base as reference, or ``ref_model``) and
ORPO on MLX.

Pairs are encoded by :func:`halo_training.tokenize.encode_pairs` (the ids trainer-torch trains on); a micro-batch
holds the chosen sequences then the rejected ones, right-padded, and the policy's per-sequence log-probability is
summed over completion tokens. The reference never trains, so its log-probabilities are computed once before
training: from the base model before the adapter is attached (= the base with the adapter off), from the initial
weights for full finetuning, or from ``ref_model``; ``reference_free`` uses 0 (a uniform reference).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from halo_schemas.training import DPOSpec, RenderedSample, TrainSpecBase
from halo_training.data import DataError, TrainingData
from halo_training.models import resolve_model_path
from halo_training.runs import RecipeResult
from halo_training.tokenize import PreferenceEncoder, encode_pairs, render_pair

from halo_trainer_mlx.core.batching import PAD_TO, epoch_order
from halo_trainer_mlx.core.context import JobContext
from halo_trainer_mlx.core.export import export_model
from halo_trainer_mlx.core.loop import Batch, train_loop
from halo_trainer_mlx.core.losses import dpo_loss, orpo_loss, preference_stats
from halo_trainer_mlx.core.model import (
    IGNORE,
    apply_finetune,
    enable_gradient_checkpointing,
    load_model,
    load_tokenizer,
)
from halo_trainer_mlx.core.samples import before_after, samples_before


def preview(spec: TrainSpecBase, tokenizer: Any, data: TrainingData, num_samples: int) -> list[RenderedSample]:
    enc = PreferenceEncoder(tokenizer, spec.max_length)
    encoded = [(enc.encode(r.record), r.source) for r in data.train[:num_samples]]
    return [s for e, src in encoded if e is not None for s in render_pair(tokenizer, e, src)]


def pair_batch(pairs: list[dict[str, list[int]]], pad_id: int, ref: np.ndarray | None = None) -> Batch:
    """Chosen sequences (rows 0..n-1) then rejected ones (n..2n-1), labels only on completion tokens."""
    import mlx.core as mx

    seqs = [(p["prompt_ids"], p["chosen_ids"]) for p in pairs] + [(p["prompt_ids"], p["rejected_ids"]) for p in pairs]
    width = max(len(a) + len(b) for a, b in seqs)
    width = -(-width // PAD_TO) * PAD_TO  # few distinct shapes for the compiled step (pads are masked)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int32)
    labels = np.full((len(seqs), width), IGNORE, dtype=np.int32)
    for i, (prompt, completion) in enumerate(seqs):
        ids[i, :len(prompt) + len(completion)] = prompt + completion
        labels[i, len(prompt):len(prompt) + len(completion)] = completion
    lengths = np.array([len(c) for _, c in seqs], dtype=np.float32)
    arrays = {"ids": mx.array(ids), "labels": mx.array(labels), "lengths": mx.array(lengths)}
    if ref is not None:
        arrays["ref"] = mx.array(ref.astype(np.float32))
    return Batch(arrays=arrays, tokens=int(sum(len(a) + len(b) for a, b in seqs)), items=len(pairs))


def sequence_logps(model: Any, batch: Batch) -> Any:
    """Sum of log p(token) over each row's completion tokens."""
    import mlx.core as mx

    logits = model(batch.arrays["ids"])[:, :-1].astype(mx.float32)
    targets = batch.arrays["labels"][:, 1:]
    mask = targets != IGNORE
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logp, mx.where(mask, targets, 0)[..., None], axis=-1)[..., 0]
    return (picked * mask).sum(axis=1)


class PreferenceTask:
    """DPO or ORPO over encoded pairs; ``ref`` holds the reference log-probs per pair (chosen, rejected)."""

    def __init__(self, spec: TrainSpecBase, method: str, pairs: list[dict[str, list[int]]], eval_pairs: list[Any],
                 pad_id: int, ref: np.ndarray | None, eval_ref: np.ndarray | None) -> None:
        self.spec, self.method, self.pairs, self.pad_id, self.ref = spec, method, pairs, pad_id, ref
        self._eval = self._batches(eval_pairs, list(range(len(eval_pairs))), eval_ref) if eval_pairs else []

    def _batches(self, pairs: list[Any], order: list[int], ref: np.ndarray | None) -> list[Batch]:
        bs = self.spec.batch_size
        return [pair_batch([pairs[i] for i in order[k:k + bs]], self.pad_id,
                           None if ref is None else ref[order[k:k + bs]])
                for k in range(0, len(order), bs)]

    def epoch_batches(self, epoch: int) -> list[Batch]:
        return self._batches(self.pairs, epoch_order(len(self.pairs), self.spec.seed, epoch), self.ref)

    def eval_batches(self) -> list[Batch]:
        return self._eval

    def loss(self, model: Any, batch: Batch) -> tuple[Any, dict[str, Any]]:
        import mlx.core as mx

        logps = sequence_logps(model, batch)
        n = batch.arrays["ids"].shape[0] // 2  # chosen rows then rejected rows (a static shape under mx.compile)
        chosen, rejected = logps[:n], logps[n:]
        lengths = batch.arrays["lengths"]
        if self.method == "orpo":
            out = orpo_loss(chosen, rejected, lengths[:n], lengths[n:], beta=self.spec.beta)  # type: ignore[attr-defined]
            stats = {**preference_stats(out), "nll": out.nll.sum(), "log_odds_ratio": out.log_odds_ratio.sum(),
                     "log_odds": out.log_odds.sum()}
            return out.losses.sum(), stats
        spec: DPOSpec = self.spec  # type: ignore[assignment]
        ref = batch.arrays.get("ref")
        ref_c, ref_r = (ref[:, 0], ref[:, 1]) if ref is not None else (mx.zeros(n), mx.zeros(n))
        out = dpo_loss(chosen, rejected, ref_c, ref_r, loss_type=spec.loss_type, beta=spec.beta,
                       label_smoothing=spec.label_smoothing, rpo_alpha=spec.rpo_alpha, chosen_lengths=lengths[:n])
        stats = {**preference_stats(out), "logps_chosen": mx.stop_gradient(chosen).sum(),
                 "logps_rejected": mx.stop_gradient(rejected).sum()}
        return out.losses.sum(), stats


def reference_logps(model: Any, pairs: list[dict[str, list[int]]], pad_id: int, batch_size: int) -> np.ndarray:
    """(n, 2) log-probs of each pair's chosen and rejected completion under ``model`` (not trained)."""
    import mlx.core as mx

    out = []
    for k in range(0, len(pairs), batch_size):
        chunk = pairs[k:k + batch_size]
        lp = sequence_logps(model, pair_batch(chunk, pad_id))
        mx.eval(lp)
        arr = np.array(lp)
        out.append(np.stack([arr[:len(chunk)], arr[len(chunk):]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)


def reference_mode(spec: TrainSpecBase, method: str) -> str:
    """none (reference-free / ORPO), base (the model before the adapter, or the initial full weights), model."""
    if method == "orpo" or getattr(spec, "reference_free", False):
        return "none"
    return "model" if getattr(spec, "ref_model", None) else "base"


def train(ctx: JobContext) -> RecipeResult:
    import mlx.core as mx

    spec, method = ctx.spec, ctx.method
    tok = load_tokenizer(ctx.resolved.model_path)
    pairs, counts = encode_pairs(tok, ctx.data.train, spec.max_length)
    if not pairs:
        raise DataError([f"{ctx.data.files[0].location}: every pair's prompt fills max_length={spec.max_length}"],
                        param="max_length")
    eval_pairs, _ = encode_pairs(tok, ctx.data.eval, spec.max_length) if ctx.has_eval else ([], {})
    mx.random.seed(spec.seed)
    model = load_model(ctx.resolved.model_path, ctx.resolved.dtype)
    before = samples_before(ctx, model, tok)
    mode = reference_mode(spec, method)
    ref = eval_ref = None
    if mode != "none":
        ref_model = model if mode == "base" else load_model(resolve_model_path(spec.ref_model), ctx.resolved.dtype)  # type: ignore[attr-defined]
        ref_model.eval()
        ref = reference_logps(ref_model, pairs, tok.pad_token_id, spec.batch_size)
        eval_ref = reference_logps(ref_model, eval_pairs, tok.pad_token_id, spec.batch_size) if eval_pairs else None
        del ref_model
    adapter_config = apply_finetune(model, spec)
    if ctx.resolved.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    task = PreferenceTask(spec, method, pairs, eval_pairs, tok.pad_token_id, ref, eval_ref)
    result = train_loop(ctx, model, task)
    result.extras.update({**counts, "reference": mode})
    if method == "dpo":
        result.extras.update({"loss_type": spec.loss_type, "beta": spec.beta})  # type: ignore[attr-defined]
    for row in ctx.run.read_metrics():
        result.extras.update({k: row[k] for k in ("reward_accuracy", "reward_margin", "reward_chosen",
                                                  "reward_rejected") if k in row})
    if result.state != "succeeded":
        return result
    model.eval()
    samples = before_after(ctx, model, tok, before)
    if samples is not None:
        result.extras["samples"] = samples
    result.outputs = export_model(ctx, model, adapter_config)
    return result


