"""The shared middle of every recipe: the job context, Trainer arguments, the callback, greedy samples
before/after training, and the train -> final eval -> export sequence.

A recipe encodes its data and builds its Trainer; :func:`train_and_export` does the rest identically for
every method, so resume, cancellation, exports and summaries never differ between recipes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from halo_training.runs import JobContext, RecipeResult  # noqa: F401  (the recipes import them from here)

from halo_trainer_torch.core.components import fused_head
from halo_trainer_torch.core.components.hooks import HaloCallback, Reporter
from halo_trainer_torch.core.components.model import is_peft, parameter_counts, save_pissa_init

log = logging.getLogger("halo_trainer_torch")


def is_main_process() -> bool:
    """Rank 0 of a distributed run, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_kwargs(ctx: JobContext) -> dict[str, Any]:
    """TrainingArguments fields every recipe shares (checkpoints go to .staging, see rundir)."""
    spec, resolved = ctx.spec, ctx.resolved
    eval_steps = spec.eval_every_steps or spec.checkpoint_every_steps
    return {
        "output_dir": str(ctx.run.staging),
        "per_device_train_batch_size": spec.batch_size,
        "per_device_eval_batch_size": spec.batch_size,
        "gradient_accumulation_steps": spec.grad_accum,
        "learning_rate": resolved.learning_rate,
        "num_train_epochs": spec.epochs,
        "max_steps": spec.max_steps or -1,
        "lr_scheduler_type": spec.lr_scheduler,
        "warmup_steps": spec.warmup_ratio,
        "weight_decay": spec.weight_decay,
        "max_grad_norm": spec.max_grad_norm,
        "optim": spec.optimizer,
        "logging_strategy": "steps",
        "logging_steps": spec.log_every_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": spec.checkpoint_every_steps,
        "save_total_limit": None,
        "eval_strategy": "steps" if ctx.has_eval else "no",
        "eval_steps": eval_steps if ctx.has_eval else None,
        "seed": spec.seed,
        "data_seed": spec.seed,
        "report_to": "none",
        "disable_tqdm": True,
        "bf16": resolved.bf16,
        "fp16": resolved.fp16,
        "use_cpu": resolved.use_cpu,
        "activation_checkpointing": resolved.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False} if resolved.gradient_checkpointing else None,
        "torch_compile": spec.torch_compile,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,
        "save_only_model": False,
        "log_level": "warning",
    }


def make_callback(ctx: JobContext) -> HaloCallback:
    es = ctx.spec.early_stopping
    return HaloCallback(
        ctx.run, ctx.reporter if is_main_process() else Reporter(), ctx.control,
        keep_checkpoints=ctx.spec.keep_checkpoints, progress_interval_s=ctx.spec.progress_interval_s,
        early_stopping=(es.patience, es.min_delta) if es else None,
    )


def trainable_fingerprint(model: Any) -> float:
    """A number that changes when any trainable parameter changes (sum and sum of squares, float64)."""
    import torch

    total = 0.0
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                t = p.detach().double()
                total += float(t.sum()) + float((t * t).sum())
    return total


def chat_prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a single user turn ready for the assistant's reply (chat template when there is one)."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                            add_generation_prompt=True, return_dict=True)
        return list(out["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def generate_samples(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers to ``prompts`` (one at a time: tiny inputs, no padding subtleties)."""
    import torch

    if not prompts:
        return []
    gen_model = model
    was_training = gen_model.training
    gen_model.eval()
    device = next(gen_model.parameters()).device
    out = []
    try:
        with torch.no_grad():
            for prompt in prompts:
                ids = torch.tensor([chat_prompt_ids(tokenizer, prompt)], device=device)
                gen = gen_model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                    do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                )
                out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip())
    finally:
        if was_training:
            gen_model.train()
    return out


def samples_before(ctx: JobContext, model: Any, tokenizer: Any) -> list[str] | None:
    """Answers of the untrained model, computed once per run (kept across resumes)."""
    prompts = ctx.spec.sample_prompts
    if not prompts:
        return None
    cached = ctx.run.read_json(ctx.run.samples_before.name)
    if isinstance(cached, list) and len(cached) == len(prompts):
        return [str(x) for x in cached]
    answers = generate_samples(model, tokenizer, prompts, ctx.spec.sample_max_new_tokens)
    if is_main_process():
        ctx.run.write_json(ctx.run.samples_before.name, answers)
    return answers


def prepare_model_files(ctx: JobContext, model: Any) -> None:
    """Per-run files a model needs before training (PiSSA's initial adapter)."""
    if ctx.spec.finetune == "pissa" and is_main_process():
        save_pissa_init(model, ctx.run.pissa_init)


def _barrier() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    except Exception:  # pragma: no cover
        pass


def export_model(ctx: JobContext, trainer: Any, tokenizer: Any) -> dict[str, str]:
    """Write adapter/ (adapter modes) or final/ (full) in standard format, atomically; returns name -> path."""
    run, spec = ctx.run, ctx.spec
    model = trainer.accelerator.unwrap_model(trainer.model)
    outputs: dict[str, str] = {}
    adapter = is_peft(model)
    name = "adapter" if adapter else "final"
    tmp = run.root / f"{name}.tmp"
    if is_main_process():
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    if adapter and spec.finetune == "pissa":
        if is_main_process():
            # Converted to a plain LoRA (rank doubled) that applies to the original, unmodified base model.
            model.save_pretrained(str(tmp), path_initial_model_for_weight_conversion=str(run.pissa_init))
    else:
        trainer.save_model(str(tmp))  # collective under FSDP/DeepSpeed
    _barrier()
    if is_main_process():
        tokenizer.save_pretrained(str(tmp))
        final = run.publish_dir(tmp, run.adapter if adapter else run.final)
        outputs[name] = str(final)
        ctx.reporter.artifact("adapter" if adapter else "model", "peft" if adapter else "hf", str(final))
    if adapter and spec.merge_adapter:
        merged_tmp = run.root / "final.tmp"
        if is_main_process():
            import shutil

            shutil.rmtree(merged_tmp, ignore_errors=True)
            merged = model.merge_and_unload()
            merged.save_pretrained(str(merged_tmp))
            tokenizer.save_pretrained(str(merged_tmp))
            final = run.publish_dir(merged_tmp, run.final)
            outputs["final"] = str(final)
            ctx.reporter.artifact("model", "hf", str(final))
        _barrier()
    return outputs


def _add_probe(ctx: JobContext, trainer: Any, callback: HaloCallback) -> Any:
    """The spec's ``probe`` as a callback (probe jobs on the eval service; see components/probe.py)."""
    probe = getattr(ctx.spec, "probe", None)
    if probe is None:
        return None
    from halo_trainer_torch.core.components.probe import ProbeCallback, bus_submitter

    submit = bus_submitter(ctx.reporter, probe.timeout_s) if is_main_process() else None
    if submit is None:
        log.warning("probe: no bus to reach the eval service from this process; probing is off")
        return None
    prober = ProbeCallback(probe, base_model=ctx.spec.model, run=ctx.run, halo=callback, submit=submit,
                           reporter=ctx.reporter, checkpoint_every=ctx.spec.checkpoint_every_steps)
    prober.trainer = trainer
    trainer.add_callback(prober)
    return prober


def train_and_export(
    ctx: JobContext,
    trainer: Any,
    callback: HaloCallback,
    model: Any,
    tokenizer: Any,
    *,
    before: list[str] | None = None,
    extras: Callable[[Any, dict[str, float]], dict[str, Any]] | None = None,
    after_export: Callable[[Any, dict[str, str]], dict[str, Any]] | None = None,
    attention_lengths: Sequence[int] | None = None,
    extra_forward_passes: float = 0.0,
) -> RecipeResult:
    """Train (resuming from ``ctx.resume_from``), then — unless stopped — evaluate, export, sample.

    ``attention_lengths`` (the lengths of the sequences tokens attend within) and ``extra_forward_passes``
    (forward-only passes per token, e.g. a reference model) refine the run's model FLOPs (MFU in the summary)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    callback.trainer = trainer
    for noisy in (PrinterCallback, ProgressCallback):  # progress goes to metrics.jsonl and events instead
        trainer.remove_callback(noisy)
    trainable, total = parameter_counts(model)
    fingerprint = trainable_fingerprint(model)
    resume = str(ctx.resume_from) if ctx.resume_from else None
    prober = _add_probe(ctx, trainer, callback)
    fused_head.score_trained_positions_only()
    trainer.train(resume_from_checkpoint=resume)
    _barrier()
    if is_main_process():
        import shutil

        shutil.rmtree(ctx.run.staging, ignore_errors=True)  # only model cards and finished moves are left there
    state = trainer.state
    result = RecipeResult(
        state="succeeded",
        steps=int(state.global_step),
        total_steps=int(state.max_steps) if state.max_steps else None,
        epochs=float(state.epoch) if state.epoch is not None else None,
        stop_reason=callback.stop_reason,
        trainable_parameters=trainable,
        total_parameters=total,
        resumed_from_step=callback.start_step or None,
        train_seconds=callback.train_seconds,
        attempt_tokens=callback.attempt_tokens,
    )
    if is_main_process():
        from halo_trainer_torch.core.components.mfu import run_flops

        result.flops_per_token, result.peak_flops, result.peak_source = run_flops(
            trainer.accelerator.unwrap_model(trainer.model), ctx, attention_lengths=attention_lengths,
            extra_forward_passes=extra_forward_passes)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    result.weights_updated = state.global_step > 0 and trainable_fingerprint(unwrapped) != fingerprint
    if callback.stop_reason in ("cancelled", "preempted", "supervisor-gone"):
        result.state = "cancelled" if callback.stop_reason == "cancelled" else "preempted"
        return result
    eval_metrics: dict[str, float] = {}
    if ctx.has_eval:
        eval_metrics = {k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))}
    if callback.early_stopped_at is not None:
        result.extras["early_stopped_at_step"] = callback.early_stopped_at
    if prober is not None:
        result.extras["probe"] = prober.summary()
    result.extras.update({k: v for k, v in eval_metrics.items() if k.startswith("eval_") and "runtime" not in k
                          and "per_second" not in k})
    if extras is not None:
        result.extras.update(extras(trainer, eval_metrics))
    if ctx.spec.sample_prompts and before is not None:
        # Before the export: merging an adapter rewrites the model in place.
        after = generate_samples(unwrapped, tokenizer, ctx.spec.sample_prompts, ctx.spec.sample_max_new_tokens)
        result.extras["samples"] = [
            {"prompt": p, "before": b, "after": a} for p, b, a in zip(ctx.spec.sample_prompts, before, after, strict=True)
        ]
    result.outputs = export_model(ctx, trainer, tokenizer)
    if after_export is not None and is_main_process():
        result.extras.update(after_export(trainer, result.outputs))
    return result
