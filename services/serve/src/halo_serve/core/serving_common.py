"""Pieces chat and completions serving share: sampling params, SSE framing, output collection."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from halo_common.errors import BadRequest, HaloError

from halo_serve.core.backends.base import SamplingParams
from halo_serve.core.engine import RequestStream, TokenLogprob
from halo_serve.core.protocol import SamplingFields, TokenLogprobOut, TopLogprobOut, error_body

DONE = "data: [DONE]\n\n"


def sse(obj: Any) -> str:
    """One server-sent event carrying ``obj`` (a pydantic model or dict) as JSON."""
    data = obj.model_dump_json(exclude_none=False) if hasattr(obj, "model_dump_json") else json.dumps(obj)
    return f"data: {data}\n\n"


def sse_error(exc: BaseException) -> str:
    err = exc if isinstance(exc, HaloError) else HaloError(f"generation failed: {exc}")
    code = getattr(err, "openai_code", None) or err.code
    return f"data: {json.dumps(error_body(err.message, err.type, err.param, code))}\n\n"


def sampling_params(req: SamplingFields, max_tokens: int, *, logprobs: bool, top_logprobs: int,
                    json_mode: bool) -> SamplingParams:
    """The backend's sampling params for an OpenAI request (OpenAI defaults: temperature 1, top_p 1)."""
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        json_mode=json_mode,
        ignore_eos=req.ignore_eos,
    )


def json_mode_of(response_format: Any) -> bool:
    if response_format is None or response_format.type == "text":
        return False
    if response_format.type == "json_object":
        return True
    raise BadRequest("response_format type 'json_schema' is not supported; use 'json_object'",
                     param="response_format.type")


@dataclass
class Collected:
    """Everything a choice produced (non-streaming responses)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0


async def collect(stream: RequestStream, n: int) -> list[Collected]:
    """Drain ``stream`` into one :class:`Collected` per choice."""
    out = [Collected() for _ in range(n)]
    async for o in stream:
        c = out[o.index]
        c.text += o.text
        c.token_ids += o.token_ids
        if o.logprobs:
            c.logprobs += o.logprobs
        if o.finish_reason is not None:
            c.finish_reason = o.finish_reason
        c.completion_tokens = o.completion_tokens
    return out


def token_logprobs_out(items: list[TokenLogprob]) -> list[TokenLogprobOut]:
    """Chat-style logprobs entries."""
    return [
        TokenLogprobOut(
            token=t.token, logprob=t.logprob, bytes=list(t.token.encode()),
            top_logprobs=[TopLogprobOut(token=x.token, logprob=x.logprob, bytes=list(x.token.encode())) for x in t.top],
        )
        for t in items
    ]


async def guarded(gen: AsyncIterator[str]) -> AsyncIterator[str]:
    """Turn an error raised mid-stream into an OpenAI error event followed by ``[DONE]``."""
    try:
        async for chunk in gen:
            yield chunk
    except HaloError as exc:
        yield sse_error(exc)
        yield DONE
