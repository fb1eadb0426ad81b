"""``POST /v1/completions``: raw prompts (text or token ids), ``echo`` and prompt ``logprobs``.

``echo`` + ``logprobs`` returns the prompt's own token log-probabilities (first token ``None``)
followed by the generated tokens', which is what loglikelihood evaluation needs (lm-eval's
``local-completions`` sends ``echo: true, logprobs: 1, max_tokens: 0|1``)::

    serving = CompletionServing(engine)
    result = await serving.create({"model": "tiny", "prompt": "2+2=", "max_tokens": 0, "echo": True, "logprobs": 1})
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from halo_common.errors import BadRequest

from halo_serve.core.backends.base import PromptScore
from halo_serve.core.engine import Engine, GenerateInput, RequestStream
from halo_serve.core.protocol import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Usage,
    parse,
)
from halo_serve.core.serving_common import DONE, Collected, collect, guarded, json_mode_of, sampling_params, sse


def _legacy_logprobs(tokens: list[str], lps: list[float | None], tops: list[dict[str, float] | None],
                     offset0: int) -> CompletionLogprobs:
    offsets, pos = [], offset0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return CompletionLogprobs(tokens=tokens, token_logprobs=lps, top_logprobs=tops, text_offset=offsets)


class CompletionServing:
    """Legacy completions over an :class:`Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def create(self, body: Any) -> Completion | AsyncIterator[str]:
        req: CompletionRequest = parse(CompletionRequest, body)
        json_mode = json_mode_of(req.response_format)
        if req.stream and req.echo and req.logprobs is not None:
            raise BadRequest("echo with logprobs is not supported when streaming", param="echo")
        prompts = req.prompts()
        prepared = await self.engine.call(self._prepare, req, prompts)
        want_lp = req.logprobs is not None
        top = req.logprobs or 0
        rid = f"cmpl-{uuid.uuid4().hex}"
        streams: list[RequestStream | None] = []
        for ids, max_tokens, _score in prepared:
            if max_tokens == 0:
                streams.append(None)
                continue
            params = sampling_params(req, max_tokens, logprobs=want_lp, top_logprobs=top, json_mode=json_mode)
            streams.append(await self.engine.generate(GenerateInput(req.model, ids, params, n=req.n,
                                                                    stop=req.stop_list())))
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return guarded(self._stream(rid, req, prompts, prepared, streams, include_usage))
        return await self._full(rid, req, prompts, prepared, streams)

    def _prepare(self, req: CompletionRequest, prompts: list[str | list[int]]
                 ) -> list[tuple[list[int], int, PromptScore | None]]:
        """Engine thread: tokenize each prompt, check the context, score the prompt for echo+logprobs."""
        lm, _ = self.engine.ensure_loaded(req.model)
        out = []
        for i, p in enumerate(prompts):
            if isinstance(p, list):
                ids = [int(x) for x in p]
                if any(x < 0 or x >= lm.model.vocab_size for x in ids):
                    raise BadRequest(f"prompt {i} has token ids outside the vocabulary (0..{lm.model.vocab_size - 1})",
                                     param="prompt")
            else:
                ids = lm.backend.tokenize(lm.model, p, add_special_tokens=True)
            if not ids:
                raise BadRequest(f"prompt {i} is empty", param="prompt")
            max_tokens = self.engine.check_prompt(req.model, len(ids), req.max_tokens)
            score = self.engine.score(req.model, ids, req.logprobs or 0) \
                if (req.echo and req.logprobs is not None) else None
            prompt_text = p if isinstance(p, str) else lm.backend.detokenize(lm.model, ids)
            out.append((ids, max_tokens, score))
            if req.echo:
                prompts[i] = prompt_text
        return out

    async def _full(self, rid: str, req: CompletionRequest, prompts: list[str | list[int]],
                    prepared: list[tuple[list[int], int, PromptScore | None]],
                    streams: list[RequestStream | None]) -> Completion:
        results = await asyncio.gather(*(collect(s, req.n) if s else _empty(req.n) for s in streams))
        choices = []
        completion_tokens = 0
        for pi, (outs, (_ids, _mt, score)) in enumerate(zip(results, prepared, strict=True)):
            for j, c in enumerate(outs):
                completion_tokens += c.completion_tokens
                text = c.text
                prefix = ""
                if req.echo:
                    prefix = str(prompts[pi])
                lp = None
                if req.logprobs is not None:
                    tokens: list[str] = []
                    lps: list[float | None] = []
                    tops: list[dict[str, float] | None] = []
                    if score is not None:
                        tokens += score.tokens
                        lps += score.logprobs
                        tops += [None if t is None else {x.token: x.logprob for x in t} for t in score.top_logprobs]
                    tokens += [t.token for t in c.logprobs]
                    lps += [t.logprob for t in c.logprobs]
                    tops += [{x.token: x.logprob for x in t.top} for t in c.logprobs]
                    lp = _legacy_logprobs(tokens, lps, tops, 0)
                choices.append(CompletionChoice(index=pi * req.n + j, text=prefix + text, logprobs=lp,
                                                finish_reason=c.finish_reason or "length"))
        prompt_tokens = sum(len(ids) for ids, _, _ in prepared)
        return Completion(id=rid, model=req.model, choices=choices,
                          usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                      total_tokens=prompt_tokens + completion_tokens))

    async def _stream(self, rid: str, req: CompletionRequest, prompts: list[str | list[int]],
                      prepared: list[tuple[list[int], int, PromptScore | None]],
                      streams: list[RequestStream | None], include_usage: bool) -> AsyncIterator[str]:
        created = int(time.time())

        # The common chunk (text, no logprobs) is formatted from a template: the same JSON as the pydantic
        # model's, at a fraction of the per-token cost (it runs once per streamed token).
        head = (f'data: {{"id":{json.dumps(rid)},"object":"text_completion","created":{created},'
                f'"model":{json.dumps(req.model)},"choices":[{{"index":')

        def chunk(index: int, text: str, finish: str | None, lp: CompletionLogprobs | None = None) -> str:
            if lp is None:
                return (f'{head}{index},"text":{json.dumps(text, ensure_ascii=False)},"logprobs":null,'
                        f'"finish_reason":{json.dumps(finish)}}}],"usage":null}}\n\n')
            return sse(Completion(id=rid, created=created, model=req.model, choices=[
                CompletionChoice(index=index, text=text, logprobs=lp, finish_reason=finish)]))

        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def pump(pi: int, s: RequestStream | None) -> None:
            try:
                if s is None:
                    for j in range(req.n):
                        await queue.put((pi, (j, Collected(finish_reason="length"))))
                    return
                async for o in s:
                    await queue.put((pi, o))
            except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
                await queue.put((pi, exc))
                raise
            finally:
                await queue.put((pi, None))

        if req.echo:
            for pi in range(len(prompts)):
                for j in range(req.n):
                    yield chunk(pi * req.n + j, str(prompts[pi]), None)
        completion_tokens = 0
        if len(streams) == 1 and streams[0] is not None and req.logprobs is None:
            # One prompt (the usual case): read its stream directly, without the pump task and queue hop.
            only = streams[0]
            try:
                async for item in only:
                    if item.finish_reason is not None:
                        completion_tokens += item.completion_tokens
                    if item.text or item.finish_reason:
                        yield chunk(item.index, item.text, item.finish_reason)
            finally:
                if only.open > 0:
                    only.cancel()
            async for tail in self._tail(rid, req, created, prepared, completion_tokens, include_usage):
                yield tail
            return
        tasks = [asyncio.create_task(pump(pi, s)) for pi, s in enumerate(streams)]
        done = 0
        try:
            while done < len(tasks):
                pi, item = await queue.get()
                if item is None:
                    done += 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, tuple):
                    yield chunk(pi * req.n + item[0], "", "length")
                    continue
                lp = None
                if req.logprobs is not None and item.logprobs:
                    lp = _legacy_logprobs([t.token for t in item.logprobs], [t.logprob for t in item.logprobs],
                                          [{x.token: x.logprob for x in t.top} for t in item.logprobs], 0)
                if item.finish_reason is not None:
                    completion_tokens += item.completion_tokens
                if item.text or lp or item.finish_reason:
                    yield chunk(pi * req.n + item.index, item.text, item.finish_reason, lp)
        finally:
            for t in tasks:
                t.cancel()
            for s in streams:
                if s is not None and s.open > 0:
                    s.cancel()
        async for tail in self._tail(rid, req, created, prepared, completion_tokens, include_usage):
            yield tail

    async def _tail(self, rid: str, req: CompletionRequest, created: int,
                    prepared: list[tuple[list[int], int, PromptScore | None]], completion_tokens: int,
                    include_usage: bool) -> AsyncIterator[str]:
        """The usage chunk (when asked for) and ``[DONE]``."""
        if include_usage:
            prompt_tokens = sum(len(ids) for ids, _, _ in prepared)
            yield sse({"id": rid, "object": "text_completion", "created": created, "model": req.model,
                       "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                                "total_tokens": prompt_tokens + completion_tokens}})
        yield DONE


async def _empty(n: int) -> list[Collected]:
    return [Collected(finish_reason="length") for _ in range(n)]
