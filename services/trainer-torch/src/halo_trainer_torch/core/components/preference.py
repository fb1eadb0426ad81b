"""A Trainer for pairwise preference objectives (DPO variants, ORPO) over pre-tokenized pairs.

It owns what TRL 1.x's DPOTrainer no longer offers (kto_pair, cDPO label smoothing on the sigmoid loss,
reference-free mode, ORPO in the stable API) while reusing TRL's pieces: the preference collator (chosen
and rejected in one padded batch) and the fused LM head (per-token log-probs without materialising the
vocabulary-sized logits).

Batches use the shared-prompt layout (:class:`~.batching.SharedPromptCollator`: each prompt runs once, no
padding) where the model's attention takes a custom mask (:func:`shared_prompt_unsupported` says when it
cannot), TRL's padded preference batches otherwise; the log-probs are the same either way.

With ``precompute_reference`` the reference log-probs are computed once, in a pass over each dataset before
its first use, and ride along in the batches (TRL's ``precompute_ref_log_probs``): E epochs then run one
reference pass instead of E, and a separate reference model is released after the pass.

The reference model is, in order: none (reference-free DPO and ORPO), the policy with its adapter
disabled (LoRA/DoRA/rsLoRA/QLoRA with no explicit reference), or a separate frozen model.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model

from halo_trainer_torch.core.components.batching import SharedPromptCollator
from halo_trainer_torch.core.components.hooks import HaloTrainerMixin
from halo_trainer_torch.core.components.losses import PreferenceLossOutput
from halo_trainer_torch.core.components.model import is_peft

log = logging.getLogger("halo_trainer_torch")

#: objective(chosen_logps, rejected_logps, ref_chosen_logps | None, ref_rejected_logps | None,
#:           chosen_lengths, rejected_lengths) -> PreferenceLossOutput
Objective = Callable[..., PreferenceLossOutput]


def shared_prompt_unsupported(config: Any, max_length: int | None) -> str | None:
    """Why ``config``'s model cannot run the shared-prompt layout exactly, or None when it can.

    The layout needs a custom 4D attention mask, which transformers' sdpa and eager attention take as given;
    flash / flex kernels take none, and a sliding window or non-attention layers would not see it.
    """
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r} takes no custom mask (sdpa and eager do)"
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        return f"layer types {sorted(kinds)} (only full-attention layers see a custom mask)"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and (max_length is None or window < max_length):
        return f"sliding window {window} is shorter than max_length {max_length}"
    return None


class PreferenceTrainer(HaloTrainerMixin, Trainer):
    """Train ``model`` on batches of (prompt, chosen, rejected) token ids with ``objective``.

    ``reference`` is "none", "adapter" (disable the PEFT adapter) or "model" (pass ``ref_model``).
    """

    # compute_loss returns a per-micro-batch mean; the Trainer divides by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *, model: Any, args: Any, train_dataset: Any, eval_dataset: Any, tokenizer: Any,
                 objective: Objective, reference: str = "none", ref_model: Any = None,
                 callbacks: list[Any] | None = None, max_length: int | None = None,
                 disable_dropout: bool = True, share_prompt: bool = True,
                 precompute_reference: bool = False) -> None:
        if reference not in ("none", "adapter", "model"):
            raise ValueError(f"unknown reference mode {reference!r}")
        if reference == "adapter" and not is_peft(model):
            raise ValueError("reference='adapter' needs a PEFT model")
        if reference == "model" and ref_model is None:
            raise ValueError("reference='model' needs ref_model")
        add_fused_lm_head(model.get_base_model() if is_peft(model) else model)
        if disable_dropout:
            disable_dropout_in_model(model)
            if ref_model is not None:
                disable_dropout_in_model(ref_model)
        if is_peft(model) and args.gradient_checkpointing:
            model.enable_input_require_grads()
        base = model.get_base_model() if is_peft(model) else model
        why_not = shared_prompt_unsupported(base.config, max_length) if share_prompt else "share_prompt is off"
        if why_not is None and ref_model is not None:
            why_not = shared_prompt_unsupported(ref_model.config, max_length)
        #: None when batches use the shared-prompt layout, else why they are padded.
        self.padded_because = why_not
        if why_not is not None and share_prompt:
            log.warning("preference batches are padded (each prompt runs twice): %s", why_not)
        if why_not is None:
            # A pair is at most two sequences of max_length; rows of two such pairs keep attention local.
            capacity = 4 * max_length if max_length else 4096
            collator: Any = SharedPromptCollator(pad_token_id=tokenizer.pad_token_id, row_capacity=capacity)
        else:
            collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=max_length)
        super().__init__(model=model, args=args, data_collator=collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=callbacks)
        self.objective = objective
        self.reference = reference
        self.ref_model = None
        if ref_model is not None and reference == "model":
            ref_model.eval()
            for p in ref_model.parameters():
                p.requires_grad_(False)
            add_fused_lm_head(ref_model)
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self.precompute_reference = precompute_reference and reference != "none"
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    @property
    def batch_layout(self) -> str:
        """"shared_prompt" or "padded" (recorded in the run summary)."""
        return "shared_prompt" if self.padded_because is None else "padded"

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps",
                                       "ref_rejected_logps"]

    def get_train_dataloader(self) -> Any:
        if self.precompute_reference and "ref_chosen_logps" not in self.train_dataset.column_names:
            self.train_dataset = self._with_reference_logps(self.train_dataset)
            if self.eval_dataset is not None and "ref_chosen_logps" not in self.eval_dataset.column_names:
                self.eval_dataset = self._with_reference_logps(self.eval_dataset)
            self.ref_model = None  # every log-prob it gives is in the datasets now: free its memory
        return super().get_train_dataloader()

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        if self.precompute_reference and eval_dataset is None and self.eval_dataset is not None \
                and "ref_chosen_logps" not in self.eval_dataset.column_names:
            self.eval_dataset = self._with_reference_logps(self.eval_dataset)
        return super().get_eval_dataloader(eval_dataset)

    def _with_reference_logps(self, dataset: Any) -> Any:
        """``dataset`` with ``ref_chosen_logps`` / ``ref_rejected_logps`` columns from one pass of the reference."""
        from torch.utils.data import DataLoader

        loader = DataLoader(dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]),
                            batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator)
        was_training = self.model.training
        self.model.eval()
        chosen: list[float] = []
        rejected: list[float] = []
        try:
            for batch in loader:
                batch.pop("num_real_tokens", None)
                batch = {k: v.to(self.args.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                with self._reference_context() as ref, self.compute_loss_context_manager():
                    logps, _ = self._sequence_logps(ref, batch)
                c, r = logps.float().chunk(2)
                chosen += c.tolist()
                rejected += r.tolist()
        finally:
            self.model.train(was_training)
        return dataset.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

    def _sequence_logps(self, model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs and completion lengths for the 2B sequences of the batch (chosen
        first, then rejected)."""
        if "sequence_index" in inputs:
            return self._shared_prompt_logps(model, inputs)
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                    fused_lm_head=True, use_cache=False)
        shift_mask = completion_mask[:, 1:]
        per_token = out.log_probs[:, -shift_mask.size(1):]
        return per_token.sum(dim=1), shift_mask.sum(dim=1)

    def _shared_prompt_logps(self, model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        mask = inputs["attention_mask"]
        if getattr(self.accelerator.unwrap_model(model).config, "_attn_implementation", None) == "eager":
            # eager attention adds its mask to the scores: allowed 0, masked the dtype's minimum
            mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
                ~mask, torch.finfo(torch.float32).min)
        out = model(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=inputs["position_ids"],
                    shift_labels=inputs["shift_labels"], fused_lm_head=True, use_cache=False)
        index = inputs["sequence_index"]
        scored = index >= 0
        sequences = 2 * inputs["num_pairs"]
        logps = out.log_probs.new_zeros(sequences).index_add(0, index[scored], out.log_probs[scored])
        return logps, torch.bincount(index[scored], minlength=sequences)

    @contextlib.contextmanager
    def _reference_context(self) -> Any:
        with torch.no_grad():
            if self.reference == "adapter":
                with self.accelerator.unwrap_model(self.model).disable_adapter():
                    yield self.model
            else:
                yield self.ref_model

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        mode = "train" if self.model.training else "eval"
        logps, lengths = self._sequence_logps(model, inputs)
        chosen_logps, rejected_logps = logps.chunk(2)
        chosen_len, rejected_len = lengths.chunk(2)
        ref_c = ref_r = None
        if "ref_chosen_logps" in inputs:
            ref_c, ref_r = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        elif self.reference != "none":
            with self._reference_context() as ref:
                ref_logps, _ = self._sequence_logps(ref, inputs)
            ref_c, ref_r = ref_logps.chunk(2)
        out = self.objective(chosen_logps, rejected_logps, ref_c, ref_r, chosen_len, rejected_len)
        loss = out.losses.mean()
        self._record(mode, out, chosen_logps.detach(), rejected_logps.detach())
        return (loss, out) if return_outputs else loss

    def _record(self, mode: str, out: PreferenceLossOutput, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> None:
        # Kept as device tensors: reading them (a host sync each on a GPU) waits for log(), once per log row.
        g = self.accelerator.gather_for_metrics
        c, r = g(out.chosen_rewards).detach(), g(out.rejected_rewards).detach()
        m = self._metrics[mode]
        m["reward_chosen"].append(c.mean())
        m["reward_rejected"].append(r.mean())
        m["reward_accuracy"].append((c > r).float().mean())
        m["reward_margin"].append((c - r).mean())
        m["logps_chosen"].append(g(chosen_logps).mean())
        m["logps_rejected"].append(g(rejected_logps).mean())
        for extra in ("nll", "log_odds_ratio", "log_odds"):
            value = getattr(out, extra, None)
            if value is not None:
                m[extra].append(g(value).detach().mean())

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[Any, Any, Any]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        kept = {k: v for k, v in self._metrics[mode].items() if v}
        means = torch.stack([torch.stack(v).float().mean() for v in kept.values()]).tolist() if kept else []
        metrics = dict(zip(kept, means, strict=True))
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()
