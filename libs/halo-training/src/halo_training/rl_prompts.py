"""Prompts of RL jobs (GRPO, RAFT; trainer-torch and trainer-mlx): records -> :class:`RLPrompt` with the
verifier context of each.

Records (validated by :func:`halo_training.data.load_training_data` first, then here; every problem names
file:line and field)::

    {"prompt": "Write a C program that ...", "context": {"cases": [{"stdin": "1 2", "expected_output": "3"}]}}
    {"prompt": [{"role": "user", "content": "..."}], "completion": "reference answer", "context": {...}}
    {"messages": [{"role": "user", "content": "tag:river"}, {"role": "assistant", "content": "<answer>river</answer>"}]}

``context`` is a :class:`~halo_schemas.verifiers.VerifyContext`; ``context.prompt`` defaults to the prompt
text and ``context.reference`` to the record's reference answer (``completion`` or the last assistant
message). An optional numeric ``complexity`` field orders prompts for RAFT's curricula.

Usage::

    register_rl_formats("grpo", "raft")                  # at import of the recipes: the loader then accepts RL_FORMATS
    train, held_out = rl_prompts(ctx.data, spec.data.text_field)
    requests = [p.request(chat=has_chat_template(tok)) for p in train]   # halo_schemas.rollout.SampleRequest
    samples = render_prompts(spec, tok, ctx.data, 2)    # a dry run's prompts (encode_chat= for another tokenizer API)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from halo_schemas.base import describe_validation_error
from halo_schemas.rollout import ChatTurn, SampleRequest
from halo_schemas.training import RenderedSample, TokenSegment
from halo_schemas.verifiers import VerifyContext
from pydantic import ValidationError

from halo_training.data import METHOD_FORMATS, DataError, SourcedRecord, TrainingData

#: Record formats RL recipes accept (``text`` is a plain prompt in ``data.text_field``, "prompt" by default).
RL_FORMATS = ("text", "prompt_completion", "messages", "alpaca", "sharegpt")


def register_rl_formats(*methods: str) -> None:
    """Tell the shared data loader which formats the RL methods accept (it validates before any model loads)."""
    for m in methods:
        METHOD_FORMATS.setdefault(m, RL_FORMATS)


@dataclass
class RLPrompt:
    """One prompt of an RL job."""

    index: int
    source: str
    messages: list[dict[str, str]] | None  # chat prompt (None: raw text prompt)
    text: str  # the prompt as text: the user turns joined (chat) or the raw prompt
    context: VerifyContext
    complexity: float | None = None

    def request(self, *, chat: bool) -> SampleRequest:
        """The rollout request: chat messages when the tokenizer has a chat template, else raw text."""
        if chat:
            msgs = self.messages or [{"role": "user", "content": self.text}]
            return SampleRequest(messages=[ChatTurn(role=m["role"], content=m["content"]) for m in msgs])  # type: ignore[arg-type]
        return SampleRequest(prompt=self.text)

    def chat_messages(self) -> list[dict[str, str]]:
        return list(self.messages) if self.messages else [{"role": "user", "content": self.text}]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    return str(value)


def _prompt_of(rec: dict[str, Any], fmt: str, text_field: str) -> tuple[list[dict[str, str]] | None, str, str | None]:
    """(chat messages or None, prompt text, reference answer or None)."""
    if fmt == "messages":
        msgs = [dict(role=m["role"], content=m["content"]) for m in rec["messages"]]
        last_assistant = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last_assistant is None:
            prompt = msgs
            reference = None
        else:
            prompt, reference = msgs[:last_assistant], msgs[last_assistant]["content"]
        text = "\n".join(m["content"] for m in prompt if m["role"] == "user")
        return prompt, text, reference
    if fmt == "prompt_completion":
        p = rec["prompt"]
        reference = _content(rec["completion"]) if rec.get("completion") is not None else None
        if isinstance(p, list):
            msgs = [dict(role=m["role"], content=m["content"]) for m in p]
            return msgs, "\n".join(m["content"] for m in msgs if m["role"] == "user"), reference
        return None, str(p), reference
    return None, str(rec[text_field]), None


def to_prompts(records: list[SourcedRecord], fmt: str, text_field: str, problems: list[str]) -> list[RLPrompt]:
    out: list[RLPrompt] = []
    for i, sr in enumerate(records):
        rec = sr.record
        messages, text, reference = _prompt_of(rec, fmt, text_field)
        if messages is not None and not any(m["role"] == "user" for m in messages):
            problems.append(f"{sr.source}: field 'messages': no user message before the answer, so no prompt")
            continue
        raw = rec.get("context", {})
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            problems.append(f"{sr.source}: field 'context': must be an object (a VerifyContext), got {type(raw).__name__}")
            continue
        try:
            ctx = VerifyContext.model_validate(raw)
        except ValidationError as exc:
            detail = describe_validation_error(exc, what="context").replace("invalid context: ", "")
            problems.append(f"{sr.source}: field 'context': {detail}")
            continue
        updates: dict[str, Any] = {}
        if ctx.prompt is None:
            updates["prompt"] = text
        if ctx.reference is None and reference is not None:
            updates["reference"] = reference
        if updates:
            ctx = ctx.model_copy(update=updates)
        complexity = rec.get("complexity")
        if complexity is not None and (isinstance(complexity, bool) or not isinstance(complexity, (int, float))):
            problems.append(f"{sr.source}: field 'complexity': must be a number, got {type(complexity).__name__}")
            continue
        out.append(RLPrompt(i, sr.source, messages, text, ctx, float(complexity) if complexity is not None else None))
    return out


def rl_prompts(data: TrainingData, text_field: str = "prompt") -> tuple[list[RLPrompt], list[RLPrompt]]:
    """(training prompts, held-out prompts); raises :class:`DataError` listing every bad record."""
    problems: list[str] = []
    train = to_prompts(data.train, data.format, text_field, problems)
    held = to_prompts(data.eval, data.format, text_field, problems)
    for i, p in enumerate(held):
        p.index = i
    if problems:
        raise DataError(problems)
    if not train:
        raise DataError([f"{data.files[0].location if data.files else 'data'}: no prompts"])
    return train, held


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                              return_dict=True)["input_ids"])


def render_prompts(spec: Any, tokenizer: Any, data: TrainingData, num_samples: int, *,
                   encode_chat: Callable[[Any, list[dict[str, str]]], list[int]] | None = None) -> list[RenderedSample]:
    """Dry-run rendering of RL prompts as the rollout sees them (a prompt is never trained: only the sampled
    completions are, so every token shows as masked). ``encode_chat(tokenizer, messages)`` gives the token ids
    of a chat prompt with the generation prompt (default: ``apply_chat_template(..., tokenize=True)``)."""
    train, _ = rl_prompts(data, spec.data.text_field)
    chat = has_chat_template(tokenizer)
    encode = encode_chat or _chat_ids
    out = []
    for p in train[:num_samples]:
        ids = list(encode(tokenizer, p.chat_messages())) if chat else list(tokenizer(p.text)["input_ids"])
        segment = TokenSegment(text=tokenizer.decode(ids), trained=False, num_tokens=len(ids))
        out.append(RenderedSample(source=p.source, part="prompt", segments=[segment], num_tokens=len(ids),
                                  num_trained_tokens=0))
    return out
