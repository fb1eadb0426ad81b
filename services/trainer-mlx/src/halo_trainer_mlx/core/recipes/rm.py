"""Bradley-Terry reward model on MLX: the base transformer plus a one-logit ``score`` head reading the last real
token, trained from chosen/rejected pairs with reward centering (``center_rewards_coefficient``).

Exports are what transformers' ``AutoModelForSequenceClassification`` (and trainer-torch's learned verifier)
load: ``final/`` (full finetuning: ``<Arch>ForSequenceClassification``, ``num_labels=1``) or ``adapter/`` (PEFT,
``task_type=SEQ_CLS``, the head in ``modules_to_save``), each with a ``verifier.json`` carrying the reward mean/std
and pairwise accuracy on held-out (or training) pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from halo_schemas.training import RenderedSample, RewardModelSpec, TrainSpecBase
from halo_training.data import DataError, TrainingData
from halo_training.models import write_verifier_manifest
from halo_training.runs import RecipeResult
from halo_training.tokenize import encode_pairs

from halo_trainer_mlx.core.batching import PAD_TO, epoch_order
from halo_trainer_mlx.core.context import JobContext
from halo_trainer_mlx.core.export import TOKENIZER_FILES, _fresh
from halo_trainer_mlx.core.loop import Batch, train_loop
from halo_trainer_mlx.core.losses import bradley_terry_loss
from halo_trainer_mlx.core.model import apply_finetune, enable_gradient_checkpointing, load_model, load_tokenizer
from halo_trainer_mlx.core.peft import adapter_tensors, mlx_to_peft
from halo_trainer_mlx.core.recipes import preference


def preview(spec: TrainSpecBase, tokenizer: Any, data: TrainingData, num_samples: int) -> list[RenderedSample]:
    # The reward model reads every token of prompt + completion.
    return [s.model_copy(update={"segments": [g.model_copy(update={"trained": True}) for g in s.segments],
                                 "num_trained_tokens": s.num_tokens})
            for s in preference.preview(spec, tokenizer, data, num_samples)]


def sequences_batch(pairs: list[dict[str, list[int]]], pad_id: int) -> Batch:
    """Chosen full sequences then rejected ones, right-padded; ``last`` = index of each row's last real token."""
    import mlx.core as mx

    seqs = [p["prompt_ids"] + p["chosen_ids"] for p in pairs] + [p["prompt_ids"] + p["rejected_ids"] for p in pairs]
    width = max(len(s) for s in seqs)
    width = -(-width // PAD_TO) * PAD_TO  # few distinct shapes for the compiled step (pads are masked)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
    return Batch(arrays={"ids": mx.array(ids), "last": mx.array([len(s) - 1 for s in seqs])},
                 tokens=sum(len(s) for s in seqs), items=len(pairs))


def rewards(model: Any, batch: Batch) -> Any:
    import mlx.core as mx

    hidden = model.model(batch.arrays["ids"])
    last = hidden[mx.arange(hidden.shape[0]), batch.arrays["last"]]
    return model.score(last.astype(mx.float32))[:, 0]


class RewardTask:
    def __init__(self, spec: RewardModelSpec, pairs: list[Any], eval_pairs: list[Any], pad_id: int) -> None:
        self.spec, self.pairs, self.pad_id = spec, pairs, pad_id
        self._eval = [sequences_batch(eval_pairs[k:k + spec.batch_size], pad_id)
                      for k in range(0, len(eval_pairs), spec.batch_size)]

    def epoch_batches(self, epoch: int) -> list[Batch]:
        order, bs = epoch_order(len(self.pairs), self.spec.seed, epoch), self.spec.batch_size
        return [sequences_batch([self.pairs[i] for i in order[k:k + bs]], self.pad_id)
                for k in range(0, len(order), bs)]

    def eval_batches(self) -> list[Batch]:
        return self._eval

    def loss(self, model: Any, batch: Batch) -> tuple[Any, dict[str, Any]]:
        import mlx.core as mx

        r = rewards(model, batch)
        n = batch.arrays["ids"].shape[0] // 2  # chosen rows then rejected rows (a static shape under mx.compile)
        chosen, rejected = r[:n], r[n:]
        loss = bradley_terry_loss(chosen, rejected, center_coefficient=self.spec.center_rewards_coefficient)
        c, j = mx.stop_gradient(chosen), mx.stop_gradient(rejected)
        # The metric names trainer-torch's reward model reports (docs/metrics.md).
        return loss * n, {"accuracy": (c > j).astype(mx.float32).sum(), "margin": (c - j).sum(),
                          "mean_reward": ((c + j) / 2).sum()}


def seq_cls_config(base_dir: str, pad_id: int) -> dict[str, Any]:
    config = json.loads((Path(base_dir) / "config.json").read_text())
    arch = (config.get("architectures") or ["LlamaForCausalLM"])[0].replace("ForCausalLM", "ForSequenceClassification")
    return {**config, "architectures": [arch], "num_labels": 1, "id2label": {"0": "LABEL_0"},
            "label2id": {"LABEL_0": 0}, "pad_token_id": pad_id, "problem_type": "regression"}


def export(ctx: JobContext, model: Any, tok: Any) -> dict[str, str]:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from safetensors.numpy import save_file

    spec, run = ctx.spec, ctx.run
    base = Path(ctx.resolved.model_path)
    score = np.array(model.score.weight.astype(mx.float32))
    if spec.finetune == "full":
        tmp = _fresh(run.root / "final.tmp")
        weights = {k: v for k, v in tree_flatten(model.parameters()) if not k.startswith("lm_head.")}
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(seq_cls_config(str(base), tok.pad_token_id), indent=2) + "\n")
        name, kind, fmt = "final", "model", "hf-seq-cls"
    else:
        tmp = _fresh(run.root / "adapter.tmp")
        from halo_trainer_mlx.core.model import lora_scale

        state, config = mlx_to_peft(adapter_tensors(model), rank=spec.lora.rank, scale=lora_scale(spec),
                                    dora=spec.finetune == "dora", base_model=spec.model, dropout=spec.lora.dropout)
        state["base_model.model.score.weight"] = score
        config.update(task_type="SEQ_CLS", modules_to_save=["score"])
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        name, kind, fmt = "adapter", "adapter", "peft-seq-cls"
    for f in TOKENIZER_FILES:
        if (base / f).is_file():
            (tmp / f).write_bytes((base / f).read_bytes())
    final = run.publish_dir(tmp, run.adapter if name == "adapter" else run.final)
    ctx.reporter.artifact(kind, "peft" if name == "adapter" else "hf", str(final))
    return {name: str(final), "format": fmt}


def train(ctx: JobContext) -> RecipeResult:
    import mlx.core as mx
    import mlx.nn as nn

    spec: RewardModelSpec = ctx.spec  # type: ignore[assignment]
    tok = load_tokenizer(ctx.resolved.model_path)
    pairs, counts = encode_pairs(tok, ctx.data.train, spec.max_length)
    if not pairs:
        raise DataError([f"{ctx.data.files[0].location}: every pair's prompt fills max_length={spec.max_length}"],
                        param="max_length")
    eval_pairs, _ = encode_pairs(tok, ctx.data.eval, spec.max_length) if ctx.has_eval else ([], {})
    mx.random.seed(spec.seed)
    model = load_model(ctx.resolved.model_path, ctx.resolved.dtype)
    hidden = model.model.embed_tokens.weight.shape[1]
    init_std = float(json.loads((Path(ctx.resolved.model_path) / "config.json").read_text()).get("initializer_range", 0.02))
    apply_finetune(model, spec)
    model.score = nn.Linear(hidden, 1, bias=False)  # trained in full next to an adapter (PEFT modules_to_save)
    model.score.weight = mx.random.normal((1, hidden)) * init_std
    if ctx.resolved.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    result = train_loop(ctx, model, RewardTask(spec, pairs, eval_pairs, tok.pad_token_id))
    result.extras.update(counts)
    if result.state != "succeeded":
        return result
    model.eval()
    outputs = export(ctx, model, tok)
    fmt = outputs.pop("format")
    held_out = bool(eval_pairs)
    sample = (eval_pairs if held_out else pairs)[:512]
    scores = np.concatenate([np.array(rewards(model, sequences_batch(sample[k:k + spec.batch_size], tok.pad_token_id)))
                             .reshape(2, -1).T for k in range(0, len(sample), spec.batch_size)])
    acc = float((scores[:, 0] > scores[:, 1]).mean())
    stats = {"mean": float(scores.mean()), "std": float(scores.std(ddof=1)) if scores.size > 1 else 0.0,
             "pairwise_accuracy": acc, "pairs": float(len(sample)), "held_out": float(held_out)}
    target = Path(next(iter(outputs.values())))
    manifest = write_verifier_manifest(target, base_model=ctx.resolved.model_path, fmt=fmt, stats=stats)
    ctx.reporter.artifact("verifier", "reward-model", str(manifest))
    result.outputs = outputs
    result.extras.update({"heldout_pairwise_accuracy" if held_out else "train_pairwise_accuracy": acc,
                          "reward_mean": stats["mean"], "reward_std": stats["std"], "verifier": str(manifest)})
    return result
