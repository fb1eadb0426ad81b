"""The OpenAI-compatible HTTP API (FastAPI). Routes are thin: parse JSON, call core serving, map.

``create_app(state)`` serves ``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /v1/models``, ``GET /health``, ``GET /metrics`` and ``GET /debug/requests/{id}`` (the
server-side token trace of a recent request: when each token was produced, on the host's
monotonic clock — for tests and benchmarks that check streaming order).

Errors are OpenAI-shaped: ``{"error": {"message", "type", "param", "code"}}``; ``code`` is
``model_not_found`` / ``context_length_exceeded`` where OpenAI defines one, else the HTTP status;
429 and 503 carry ``Retry-After``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from halo_common.errors import BadRequest, HaloError, NotFound
from prometheus_client import CollectorRegistry, generate_latest

from halo_serve.core.engine import ContextLengthExceeded, Engine
from halo_serve.core.models import ModelNotFound
from halo_serve.core.protocol import ModelCard, ModelList, error_body
from halo_serve.core.serving_chat import ChatServing
from halo_serve.core.serving_completion import CompletionServing
from halo_serve.metrics import ServeMetrics


@dataclass
class AppState:
    engine: Engine
    registry: CollectorRegistry
    metrics: ServeMetrics
    retry_after_s: int = 1
    version: str = "0.1.0"


def openai_error(exc: HaloError, retry_after_s: int = 1) -> JSONResponse:
    """The OpenAI error response for ``exc``."""
    code: str | int = exc.code
    type_ = exc.type
    if isinstance(exc, ModelNotFound):
        code, type_ = "model_not_found", "invalid_request_error"
    elif isinstance(exc, ContextLengthExceeded):
        code = "context_length_exceeded"
    elif exc.code == 429:
        code = "rate_limit_exceeded"
    headers = {"Retry-After": str(retry_after_s)} if exc.code in (429, 503) else None
    return JSONResponse(error_body(exc.message, type_, exc.param, code), status_code=exc.code, headers=headers)


def model_cards(engine: Engine) -> ModelList:
    cards = []
    for spec in engine.catalog.all():
        loaded = spec.id in engine.loaded or spec.id in engine.adapters
        cards.append(ModelCard(id=spec.id, root=spec.adapter_path or spec.path, parent=spec.base_id,
                               base=spec.base_id, format=spec.format, backend=spec.backend, loaded=loaded))
    return ModelList(data=cards)


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON", param=None) from None


def create_app(state: AppState) -> FastAPI:
    app = FastAPI(title="Halo Forge serve", version=state.version,
                  description="OpenAI-compatible API of the serve service.")
    app.state.serve = state
    chat = ChatServing(state.engine)
    completions = CompletionServing(state.engine)

    @app.exception_handler(HaloError)
    async def _on_error(request: Request, exc: HaloError) -> JSONResponse:
        state.metrics.requests.labels(request.url.path, str(exc.code)).inc()
        return openai_error(exc, state.retry_after_s)

    def respond(endpoint: str, result: Any) -> Any:
        state.metrics.requests.labels(endpoint, "200").inc()
        if isinstance(result, AsyncIterator):
            return StreamingResponse(result, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(result.model_dump(mode="json"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return respond("/v1/chat/completions", await chat.create(await _json(request)))

    @app.post("/v1/completions")
    async def create_completion(request: Request) -> Any:
        return respond("/v1/completions", await completions.create(await _json(request)))

    @app.get("/v1/models")
    async def list_models() -> Any:
        return JSONResponse(model_cards(state.engine).model_dump(mode="json"))

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Any:
        for card in model_cards(state.engine).data:
            if card.id == model_id:
                return JSONResponse(card.model_dump(mode="json"))
        raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "version": state.version, **state.engine.stats()}

    @app.get("/metrics")
    async def metrics() -> Any:
        return PlainTextResponse(generate_latest(state.registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/debug/requests/{request_id}")
    async def trace(request_id: str) -> Any:
        stream = state.engine.traces.get(request_id.removeprefix("chatcmpl-"))
        if stream is None:
            raise NotFound(f"no recent request {request_id}", param="request_id")
        return JSONResponse(json.loads(json.dumps({
            "request_id": stream.request_id, "submitted_at": stream.submitted_at,
            "token_times": stream.token_times, "finished_at": stream.finished_at,
        })))

    return app
