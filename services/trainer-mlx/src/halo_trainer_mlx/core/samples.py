"""Greedy sample answers before and after training (``sample_prompts``), with the chat template."""

from __future__ import annotations

from typing import Any

from halo_trainer_mlx.core.context import JobContext


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                            add_generation_prompt=True, return_dict=True)
        return list(out["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def generate_samples(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy decoding without a KV cache (a few short answers; exact, and independent of packing hooks)."""
    import mlx.core as mx

    out = []
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt)
        new: list[int] = []
        for _ in range(max_new_tokens):
            logits = model(mx.array([ids + new]))
            token = int(mx.argmax(logits[0, -1]).item())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
        out.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return out


def samples_before(ctx: JobContext, model: Any, tokenizer: Any) -> list[str] | None:
    """Answers of the untrained model, computed once per run (a resume reads them back)."""
    prompts = ctx.spec.sample_prompts
    if not prompts:
        return None
    name = ctx.run.samples_before.name
    answers = ctx.run.read_json(name)
    if not (isinstance(answers, list) and len(answers) == len(prompts)):
        answers = generate_samples(model, tokenizer, prompts, ctx.spec.sample_max_new_tokens)
        ctx.run.write_json(name, answers)
    return [str(a) for a in answers]


def before_after(ctx: JobContext, model: Any, tokenizer: Any, before: list[str] | None) -> list[dict[str, str]] | None:
    """The summary's ``samples`` rows (prompt, before, after) with ``model``'s answers now; None when the
    spec has no ``sample_prompts`` or the answers before training are missing."""
    prompts = ctx.spec.sample_prompts
    if not prompts or before is None:
        return None
    after = generate_samples(model, tokenizer, prompts, ctx.spec.sample_max_new_tokens)
    return [{"prompt": p, "before": b, "after": a} for p, b, a in zip(prompts, before, after, strict=True)]
