"""Prompts of an RL job on MLX: validated records -> :class:`RLPrompt` (chat messages or text, verifier context).

The record formats and rules of docs/rl.md (the same as trainer-torch's): ``{"prompt": "...", "context": {...}}``,
``{"prompt": ..., "completion": ...}`` or ``{"messages": [...]}``; ``context.prompt`` defaults to the prompt text and
``context.reference`` to the record's answer (``completion`` or the last assistant message)::

    train, held_out = rl_prompts(ctx.data, spec.data.text_field)
    request = train[0].request(chat=True)            # a halo_schemas.rollout.SampleRequest
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from halo_schemas.base import describe_validation_error
from halo_schemas.rollout import ChatTurn, SampleRequest
from halo_schemas.verifiers import VerifyContext
from halo_training.data import METHOD_FORMATS, DataError, SourcedRecord, TrainingData
from pydantic import ValidationError

#: Record formats the RL recipes accept; registered with the shared loader so data is validated before any model.
RL_FORMATS = ("text", "prompt_completion", "messages", "alpaca", "sharegpt")
METHOD_FORMATS.setdefault("grpo", RL_FORMATS)


@dataclass
class RLPrompt:
    index: int
    source: str
    messages: list[dict[str, str]] | None  # chat prompt; None: raw text prompt
    text: str
    context: VerifyContext

    def request(self, *, chat: bool) -> SampleRequest:
        """The rollout request: chat messages when the tokenizer has a chat template, else the raw text."""
        if chat:
            msgs = self.messages or [{"role": "user", "content": self.text}]
            return SampleRequest(messages=[ChatTurn(role=m["role"], content=m["content"]) for m in msgs])  # type: ignore[arg-type]
        return SampleRequest(prompt=self.text)


def _content(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    return str(value)


def _split(rec: dict[str, Any], fmt: str, text_field: str) -> tuple[list[dict[str, str]] | None, str, str | None]:
    """(chat messages or None, prompt text, reference answer or None)."""
    if fmt == "messages":
        msgs = [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        prompt, reference = (msgs, None) if last is None else (msgs[:last], msgs[last]["content"])
        return prompt, "\n".join(m["content"] for m in prompt if m["role"] == "user"), reference
    if fmt == "prompt_completion":
        p = rec["prompt"]
        reference = _content(rec["completion"]) if rec.get("completion") is not None else None
        if isinstance(p, list):
            msgs = [{"role": m["role"], "content": m["content"]} for m in p]
            return msgs, "\n".join(m["content"] for m in msgs if m["role"] == "user"), reference
        return None, str(p), reference
    return None, str(rec[text_field]), None


def to_prompts(records: list[SourcedRecord], fmt: str, text_field: str, problems: list[str]) -> list[RLPrompt]:
    out: list[RLPrompt] = []
    for i, sr in enumerate(records):
        messages, text, reference = _split(sr.record, fmt, text_field)
        if messages is not None and not any(m["role"] == "user" for m in messages):
            problems.append(f"{sr.source}: field 'messages': no user message before the answer, so no prompt")
            continue
        raw = sr.record.get("context") or {}
        if not isinstance(raw, dict):
            problems.append(f"{sr.source}: field 'context': must be an object (a VerifyContext), got {type(raw).__name__}")
            continue
        try:
            ctx = VerifyContext.model_validate(raw)
        except ValidationError as exc:
            problems.append(f"{sr.source}: field 'context': "
                            + describe_validation_error(exc, what="context").replace("invalid context: ", ""))
            continue
        updates: dict[str, Any] = {}
        if ctx.prompt is None:
            updates["prompt"] = text
        if ctx.reference is None and reference is not None:
            updates["reference"] = reference
        out.append(RLPrompt(i, sr.source, messages, text, ctx.model_copy(update=updates) if updates else ctx))
    return out


def rl_prompts(data: TrainingData, text_field: str = "prompt") -> tuple[list[RLPrompt], list[RLPrompt]]:
    """(training prompts, held-out prompts); :class:`DataError` lists every bad record."""
    problems: list[str] = []
    train = to_prompts(data.train, data.format, text_field, problems)
    held = to_prompts(data.eval, data.format, text_field, problems)
    if problems:
        raise DataError(problems)
    if not train:
        raise DataError([f"{data.files[0].location if data.files else 'data'}: no prompts"])
    return train, held
