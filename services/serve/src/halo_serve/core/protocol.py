"""OpenAI wire shapes (pydantic): requests, responses, streaming chunks, errors.

Requests validate what the server supports and reject the rest with a 400 naming the parameter
(:func:`validation_error`). Unknown fields are ignored, as OpenAI-compatible servers do, so newer
SDKs keep working. Extensions (as in vLLM): ``ignore_eos`` (generate exactly ``max_tokens``).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from halo_common.errors import BadRequest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Resp(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- shared pieces -------------------------------------------------------------------------------
class StreamOptions(_Req):
    include_usage: bool = False


class ResponseFormat(_Req):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class FunctionDef(_Req):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Req):
    type: Literal["function"] = "function"
    function: FunctionDef


class FunctionCall(_Resp):
    name: str
    arguments: str


class ToolCall(_Resp):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Req):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str | None:
        """Content as one string (text parts joined; other part types are refused)."""
        if self.content is None or isinstance(self.content, str):
            return self.content
        parts = []
        for i, p in enumerate(self.content):
            if p.get("type") != "text":
                raise BadRequest(f"content part type {p.get('type')!r} is not supported (text only)",
                                 param=f"messages.content.{i}.type")
            parts.append(str(p.get("text", "")))
        return "".join(parts)


class SamplingFields(_Req):
    """Fields chat and completions share."""

    model: str
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    user: str | None = None
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    def stop_list(self) -> list[str]:
        return list(self.stop or [])  # type: ignore[arg-type]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise BadRequest("top_logprobs requires logprobs: true", param="top_logprobs")
        if isinstance(self.tool_choice, str) and self.tool_choice not in ("none", "auto", "required"):
            raise BadRequest("tool_choice must be 'none', 'auto', 'required' or a function", param="tool_choice")
        return self

    def max_new(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if self.suffix:
            raise BadRequest("suffix is not supported", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise BadRequest("best_of other than n is not supported", param="best_of")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompt(s) as a list of texts or token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise BadRequest("prompt must not be empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


# ---- responses -----------------------------------------------------------------------------------
class Usage(_Resp):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprobOut(_Resp):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(_Resp):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprobOut] = Field(default_factory=list)


class ChoiceLogprobs(_Resp):
    content: list[TokenLogprobOut] | None = None


class ChatMessageOut(_Resp):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(_Resp):
    index: int
    message: ChatMessageOut
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None


class ChatCompletion(_Resp):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class DeltaToolCall(_Resp):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict[str, Any] | None = None


class ChatDelta(_Resp):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(_Resp):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Resp):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(_Resp):
    """Legacy completions logprobs: parallel lists."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(_Resp):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class Completion(_Resp):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(_Resp):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "halo-forge"
    root: str | None = None
    parent: str | None = None
    # Halo extensions: what the model is and how it is served.
    base: str | None = None
    format: str | None = None
    backend: str | None = None
    loaded: bool = False


class ModelList(_Resp):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def error_body(message: str, type_: str, param: str | None, code: str | int | None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI sends it."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def validation_error(exc: ValidationError) -> BadRequest:
    """The first pydantic error as a 400 naming the parameter (``messages.0.role``)."""
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    # pydantic reports union members in loc (e.g. "str", "list[str]"): keep field names only.
    loc = [p for p in loc if not any(ch in p for ch in "[]") and p not in ("str", "int", "list", "function-after")]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return BadRequest(f"{param}: {msg}" if param else msg, param=param)


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validate a request body into ``model`` or raise a 400 naming the parameter."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", param=None)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
