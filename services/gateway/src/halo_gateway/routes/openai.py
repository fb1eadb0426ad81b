"""``/v1/*``: the OpenAI-compatible API, proxied to the serve service.

The gateway asks serve where its HTTP API is (``halo.rpc.serve.info``, cached; asked again when
the cached URL stops answering) and forwards each request with httpx, streaming the response back
chunk by chunk (no buffering: SSE tokens reach the client as serve sends them). The gateway's
bearer-token auth covers ``/v1`` (app middleware). Serve's errors are already OpenAI-shaped and
pass through unchanged; serve unreachable -> 503 ``{"error": …}`` with ``Retry-After``.

Control (what ``halo-forge serve list|load|unload`` uses): ``GET /api/v1/serve/models``,
``POST /api/v1/serve/models`` (a ``halo.rpc.serve-load-request.v1`` body),
``DELETE /api/v1/serve/models/{id}?forget=true``.
"""

from __future__ import annotations

import time

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from halo_bus import Bus
from halo_clients.serve import ServeClient
from halo_common.errors import HaloError
from halo_schemas.serve import ServeLoadRequest, ServeModel, ServeModelList
from starlette.background import BackgroundTask

from halo_gateway.app import get_bus

router = APIRouter(tags=["openai"])

#: Response headers passed through from serve (hop-by-hop and length headers are not: the body is streamed).
_PASS_HEADERS = ("content-type", "retry-after", "cache-control", "x-request-id")
_URL_TTL_S = 30.0
_RETRY_AFTER_S = 2


class _ServeLocator:
    """Cached serve URL per gateway app."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.at = 0.0
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))

    async def get(self, bus: Bus, refresh: bool = False) -> str:
        if refresh or self.url is None or time.monotonic() - self.at > _URL_TTL_S:
            info = await ServeClient(bus).info()
            self.url, self.at = info.url.rstrip("/"), time.monotonic()
        return self.url


def _locator(request: Request) -> _ServeLocator:
    loc = getattr(request.app.state, "serve_locator", None)
    if loc is None:
        loc = request.app.state.serve_locator = _ServeLocator()
    return loc


def _unavailable(message: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "unavailable_error", "param": None, "code": 503}}
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(_RETRY_AFTER_S)})


@router.api_route("/v1/{path:path}", methods=["GET", "POST", "DELETE"], include_in_schema=False)
async def proxy(path: str, request: Request, bus: Bus = Depends(get_bus)) -> object:
    loc = _locator(request)
    body = await request.body()
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
    for attempt in (0, 1):  # a second try with a fresh URL when serve restarted on another port
        try:
            base = await loc.get(bus, refresh=attempt == 1)
        except HaloError as exc:
            return _unavailable(f"the serve service is not running ({exc.message}); start it with "
                                "`halo-forge serve --model …`")
        req = loc.client.build_request(request.method, f"{base}/v1/{path}", content=body, headers=headers,
                                       params=request.query_params)
        try:
            resp = await loc.client.send(req, stream=True)
        except httpx.TransportError:
            if attempt == 0:
                continue
            return _unavailable(f"the serve service at {base} does not answer")
        out_headers = {k: v for k, v in resp.headers.items() if k.lower() in _PASS_HEADERS}
        return StreamingResponse(resp.aiter_raw(), status_code=resp.status_code, headers=out_headers,
                                 background=BackgroundTask(resp.aclose))
    return _unavailable("the serve service does not answer")


#: A first model load can take minutes on a real model.
_LOAD_TIMEOUT_S = 900.0


def _serve(bus: Bus) -> ServeClient:
    return ServeClient(bus, timeout=10.0, load_timeout=_LOAD_TIMEOUT_S)


@router.get("/api/v1/serve/models", tags=["serve"])
async def serve_models(bus: Bus = Depends(get_bus)) -> ServeModelList:
    return await _serve(bus).list()


@router.post("/api/v1/serve/models", tags=["serve"])
async def serve_load(body: ServeLoadRequest, bus: Bus = Depends(get_bus)) -> ServeModel:
    return await _serve(bus).load(body)


@router.delete("/api/v1/serve/models/{model_id:path}", tags=["serve"])
async def serve_unload(model_id: str, forget: bool = False, bus: Bus = Depends(get_bus)) -> ServeModelList:
    return await _serve(bus).unload(model_id, forget=forget)
