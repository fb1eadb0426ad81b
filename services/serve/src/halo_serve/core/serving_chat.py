"""``POST /v1/chat/completions``: messages -> chat template -> engine -> OpenAI response or SSE chunks.

::

    serving = ChatServing(engine)
    result = await serving.create(body)      # ChatCompletion, or an async iterator of SSE strings
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from halo_common.errors import BadRequest

from halo_serve.core.engine import Engine, GenerateInput, RequestStream
from halo_serve.core.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessageOut,
    ChoiceLogprobs,
    DeltaToolCall,
    Usage,
    parse,
)
from halo_serve.core.serving_common import (
    DONE,
    collect,
    guarded,
    json_mode_of,
    sampling_params,
    sse,
    token_logprobs_out,
)
from halo_serve.core.tool_parsers import parse_tool_calls, tool_format_of


def _message_dicts(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """OpenAI messages as the dicts chat templates expect (tool-call arguments as objects, as
    Hugging Face templates render them)."""
    import json

    out = []
    for i, m in enumerate(req.messages):
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text() or ""}
        if m.name:
            d["name"] = m.name
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            calls = []
            for j, tc in enumerate(m.tool_calls):
                fn = dict(tc.get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args) if args else {}
                    except ValueError:
                        raise BadRequest("tool call arguments must be a JSON string",
                                         param=f"messages.{i}.tool_calls.{j}.function.arguments") from None
                calls.append({**tc, "function": fn})
            d["tool_calls"] = calls
        out.append(d)
    return out


class ChatServing:
    """Chat completions over an :class:`Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def create(self, body: Any) -> ChatCompletion | AsyncIterator[str]:
        req: ChatCompletionRequest = parse(ChatCompletionRequest, body)
        json_mode = json_mode_of(req.response_format)
        messages = _message_dicts(req)
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools and req.tool_choice != "none" else None
        prompt_ids, max_tokens, tool_fmt = await self.engine.call(self._prepare, req, messages, tools)
        params = sampling_params(req, max_tokens, logprobs=req.logprobs, top_logprobs=req.top_logprobs or 0,
                                 json_mode=json_mode)
        inp = GenerateInput(req.model, prompt_ids, params, n=req.n, stop=req.stop_list())
        stream = await self.engine.generate(inp)
        rid = f"chatcmpl-{inp.request_id}"
        parse_tools = tool_fmt if tools else None
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return guarded(self._stream(rid, req, stream, include_usage, parse_tools))
        return await self._full(rid, req, stream, parse_tools)

    def _prepare(self, req: ChatCompletionRequest, messages: list[dict[str, Any]],
                 tools: list[dict[str, Any]] | None) -> tuple[list[int], int, str | None]:
        """Engine thread: template + tokenize + context check."""
        lm, _ = self.engine.ensure_loaded(req.model)
        text = lm.backend.render_chat(lm.model, messages, tools)
        ids = lm.backend.tokenize(lm.model, text, add_special_tokens=False)
        max_tokens = self.engine.check_prompt(req.model, len(ids), req.max_new())
        return ids, max_tokens, tool_format_of(lm.model.chat_template)

    async def _full(self, rid: str, req: ChatCompletionRequest, stream: RequestStream,
                    tool_fmt: str | None) -> ChatCompletion:
        outs = await collect(stream, req.n)
        choices = []
        for i, c in enumerate(outs):
            calls, content = parse_tool_calls(c.text, tool_fmt) if tool_fmt else ([], c.text)
            finish = "tool_calls" if calls else c.finish_reason
            choices.append(ChatChoice(
                index=i,
                message=ChatMessageOut(content=content, tool_calls=calls or None),
                logprobs=ChoiceLogprobs(content=token_logprobs_out(c.logprobs)) if req.logprobs else None,
                finish_reason=finish,
            ))
        completion = sum(c.completion_tokens for c in outs)
        return ChatCompletion(id=rid, model=req.model, choices=choices,
                              usage=Usage(prompt_tokens=stream.prompt_tokens, completion_tokens=completion,
                                          total_tokens=stream.prompt_tokens + completion))

    async def _stream(self, rid: str, req: ChatCompletionRequest, stream: RequestStream, include_usage: bool,
                      tool_fmt: str | None) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
            c = ChatCompletionChunk(id=rid, created=created, model=req.model, choices=choices, usage=usage)
            return sse(c)

        for i in range(req.n):
            yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
        completion = [0] * req.n
        # With tools and a tool-call format, a choice's text is held until it ends: only then is it
        # known whether it is content or tool calls.
        held = [""] * req.n
        async for o in stream:
            completion[o.index] = o.completion_tokens
            if tool_fmt:
                held[o.index] += o.text
                if o.finish_reason is None:
                    continue
                calls, content = parse_tool_calls(held[o.index], tool_fmt)
                if calls:
                    deltas = [DeltaToolCall(index=k, id=c.id, type="function",
                                            function={"name": c.function.name, "arguments": c.function.arguments})
                              for k, c in enumerate(calls)]
                    yield chunk([ChatChunkChoice(index=o.index, delta=ChatDelta(content=content, tool_calls=deltas),
                                                 finish_reason="tool_calls")])
                    continue
                text = held[o.index]
            else:
                text = o.text
            lp = ChoiceLogprobs(content=token_logprobs_out(o.logprobs)) if (req.logprobs and o.logprobs) else None
            if text or lp or o.finish_reason:
                yield chunk([ChatChunkChoice(index=o.index, delta=ChatDelta(content=text or None), logprobs=lp,
                                             finish_reason=o.finish_reason)])
        if include_usage:
            total = sum(completion)
            yield chunk([], Usage(prompt_tokens=stream.prompt_tokens, completion_tokens=total,
                                  total_tokens=stream.prompt_tokens + total))
        yield DONE
