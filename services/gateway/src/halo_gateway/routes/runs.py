"""``/api/v1/runs…``: the registry over REST. Each route validates its input with the registry's
wire model (an unknown query parameter or body field is a 400 naming it), makes one bus request,
and returns the reply. A ``{run_id}`` in the path is checked first with the shared id rule
(``halo_common.ids.validate_id``: a 400 naming ``run_id``). Bundles travel over HTTP; the registry reads and writes them under the
shared HALO_HOME (``incoming/`` for uploads, ``bundles/`` for downloads).

    GET    /api/v1/runs?status=succeeded&method=sft,dpo&tag=x&sort=-created_at&limit=20&facets=true
    POST   /api/v1/runs/search                  {RunSearch}
    GET    /api/v1/runs/compare?ids=a,b&metrics=loss,reward&max_points=300
    GET    /api/v1/runs/grid?ids=a,b  |  POST /api/v1/runs/grid {EvalGridRequest}
    POST   /api/v1/runs/import?replace=false    (body: the bundle file)
    GET    /api/v1/runs/{id}                    detail
    GET    /api/v1/runs/{id}/metrics?names=loss&max_points=500
    GET    /api/v1/runs/{id}/cost?price_per_kwh=0.2
    GET    /api/v1/runs/{id}/replay
    GET    /api/v1/runs/{id}/bundle?include_adapter=true&include_artifacts=false
                                                   (the archive; X-Halo-Bundle-Sha256 header)
    POST   /api/v1/runs/{id}/tags  {add, remove}     POST /api/v1/runs/{id}/notes {notes, append}
    POST   /api/v1/runs/{id}/evals {results, source}
    DELETE /api/v1/runs/{id}?keep_artifacts=true&force=false
"""

from __future__ import annotations

import contextlib
import typing
import uuid
from pathlib import Path
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import FileResponse
from halo_bus import Bus
from halo_clients import RegistryClient
from halo_common.errors import BadRequest, Unavailable
from halo_common.ids import validate_id
from halo_schemas.base import describe_validation_error
from halo_schemas.registry import (
    EvalGrid,
    EvalGridRequest,
    EvalRecorded,
    EvalRecordRequest,
    RunBundleRequest,
    RunCompareRequest,
    RunComparison,
    RunCost,
    RunCostRequest,
    RunDeleted,
    RunDeleteRequest,
    RunDetail,
    RunImported,
    RunMetrics,
    RunMetricsRequest,
    RunNoteRequest,
    RunSearch,
    RunsPage,
    RunSummary,
    RunTagRequest,
)
from halo_schemas.replay import ReplayInfo
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask

from halo_gateway.app import get_bus

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])
M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
LONG_TIMEOUT_S = 300.0  # bundles and imports copy files


def validate(model: type[M], data: dict[str, Any], what: str) -> M:
    """``model`` from ``data``, or a 400 naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        raise BadRequest(describe_validation_error(exc, what=what), param=".".join(map(str, first)) or None) from None


def from_query(request: Request, model: type[M], *, rename: dict[str, str] | None = None, **fixed: Any) -> M:
    """Build ``model`` from the query string: list fields take repeats and/or commas; any parameter
    the model does not have is refused by name."""
    rename = rename or {}
    lists = {name for name, f in model.model_fields.items() if typing.get_origin(f.annotation) is list}
    data: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        field = rename.get(key, key)
        if field in lists:
            data.setdefault(field, []).extend(v for v in value.split(",") if v)
        elif field in data:
            raise BadRequest(f"{key}: given more than once", param=key)
        else:
            data[field] = value
    return validate(model, {**data, **fixed}, "query")


def registry(request: Request, bus: Bus) -> RegistryClient:
    """The registry's typed client with this gateway's timeouts (bundles and imports copy files: longer)."""
    timeout = request.app.state.settings.rpc_timeout_s
    return RegistryClient(bus, timeout=timeout, long_timeout=max(timeout, LONG_TIMEOUT_S))


@router.get("", response_model=RunsPage)
async def search_runs(request: Request, bus: Bus = Depends(get_bus)) -> RunsPage:
    """Search runs: filters (status, method, model, backend, tag, text, since, until, has_eval), sort, limit,
    offset, facets — the fields of RunSearch."""
    return await registry(request, bus).search(from_query(request, RunSearch))


@router.post("/search", response_model=RunsPage)
async def search_runs_body(request: Request, body: dict[str, Any] = Body(default_factory=dict),
                           bus: Bus = Depends(get_bus)) -> RunsPage:
    return await registry(request, bus).search(validate(RunSearch, body, "search"))


@router.get("/compare", response_model=RunComparison)
async def compare_runs(request: Request, bus: Bus = Depends(get_bus)) -> RunComparison:
    """Overlay series + config diff of up to 8 runs: ``?ids=a,b,c&metrics=loss&max_points=500``."""
    req = from_query(request, RunCompareRequest, rename={"ids": "run_ids"})
    return await registry(request, bus).compare(req.run_ids, req.metrics, req.max_points)


@router.get("/grid", response_model=EvalGrid)
async def eval_grid(request: Request, bus: Bus = Depends(get_bus)) -> EvalGrid:
    """Runs × tasks evaluation grid: ``?ids=a,b&tasks=gsm8k&metric=accuracy`` (no ids: runs with evals)."""
    req = from_query(request, EvalGridRequest, rename={"ids": "run_ids"})
    return await registry(request, bus).grid(req)


@router.post("/grid", response_model=EvalGrid)
async def eval_grid_body(request: Request, body: dict[str, Any] = Body(default_factory=dict),
                         bus: Bus = Depends(get_bus)) -> EvalGrid:
    return await registry(request, bus).grid(validate(EvalGridRequest, body, "grid"))


@router.post("/import", response_model=RunImported)
async def import_run(request: Request, replace: bool = False, bus: Bus = Depends(get_bus)) -> RunImported:
    """Import a bundle sent as the request body (``halo-forge runs import FILE``)."""
    incoming = anyio.Path(request.app.state.settings.paths.home / "incoming")
    await incoming.mkdir(parents=True, exist_ok=True)
    path = incoming / f"upload-{uuid.uuid4().hex}.tar.gz"
    try:
        size = 0
        async with await anyio.open_file(path, "wb") as f:
            async for chunk in request.stream():
                await f.write(chunk)
                size += len(chunk)
        if size == 0:
            raise BadRequest("empty upload: send the bundle file as the request body", param="body")
        return await registry(request, bus).import_bundle(str(path), replace=replace)
    finally:
        await path.unlink(missing_ok=True)


@router.get("/{run_id}", response_model=RunDetail)
async def get_run(run_id: str, request: Request, bus: Bus = Depends(get_bus)) -> RunDetail:
    return await registry(request, bus).get(validate_id(run_id, "run_id"))


@router.get("/{run_id}/metrics", response_model=RunMetrics)
async def run_metrics(run_id: str, request: Request, bus: Bus = Depends(get_bus)) -> RunMetrics:
    req = from_query(request, RunMetricsRequest, run_id=validate_id(run_id, "run_id"))
    return await registry(request, bus).metrics(req.run_id, req.names, req.max_points, req.step_min, req.step_max)


@router.get("/{run_id}/cost", response_model=RunCost)
async def run_cost(run_id: str, request: Request, bus: Bus = Depends(get_bus)) -> RunCost:
    req = from_query(request, RunCostRequest, run_id=validate_id(run_id, "run_id"))
    return await registry(request, bus).cost(req.run_id, req.price_per_kwh)


@router.get("/{run_id}/replay", response_model=ReplayInfo)
async def run_replay(run_id: str, request: Request, bus: Bus = Depends(get_bus)) -> ReplayInfo:
    return await registry(request, bus).replay(validate_id(run_id, "run_id"))


@router.get("/{run_id}/bundle")
async def download_bundle(run_id: str, request: Request, bus: Bus = Depends(get_bus)) -> FileResponse:
    """The run's bundle archive; the registry writes it, this route streams and then removes it."""
    req = from_query(request, RunBundleRequest, run_id=validate_id(run_id, "run_id"))
    bundle = await registry(request, bus).bundle(req.run_id, include_adapter=req.include_adapter,
                                                 include_artifacts=req.include_artifacts)
    path = Path(bundle.path)
    if not await anyio.Path(path).is_file():
        raise Unavailable(f"the registry wrote {path} but the gateway cannot read it: gateway and registry must share "
                          "HALO_HOME")

    def remove() -> None:
        with contextlib.suppress(OSError):
            path.unlink()

    return FileResponse(path, media_type="application/gzip", filename=path.name, background=BackgroundTask(remove),
                        headers={"X-Halo-Bundle-Sha256": bundle.sha256, "X-Halo-Bundle-Files": str(bundle.files)})


@router.post("/{run_id}/tags", response_model=RunSummary)
async def tag_run(run_id: str, request: Request, body: dict[str, Any] = Body(default_factory=dict),
                  bus: Bus = Depends(get_bus)) -> RunSummary:
    req = validate(RunTagRequest, {**body, "run_id": validate_id(run_id, "run_id")}, "tags")
    return await registry(request, bus).tag(req.run_id, req.add, req.remove)


@router.post("/{run_id}/notes", response_model=RunSummary)
async def note_run(run_id: str, request: Request, body: dict[str, Any] = Body(default_factory=dict),
                   bus: Bus = Depends(get_bus)) -> RunSummary:
    req = validate(RunNoteRequest, {**body, "run_id": validate_id(run_id, "run_id")}, "notes")
    return await registry(request, bus).note(req.run_id, req.notes, append=req.append)


@router.post("/{run_id}/evals", response_model=EvalRecorded)
async def record_evals(run_id: str, request: Request, body: dict[str, Any] = Body(default_factory=dict),
                       bus: Bus = Depends(get_bus)) -> EvalRecorded:
    req = validate(EvalRecordRequest, {**body, "run_id": validate_id(run_id, "run_id")}, "evals")
    return await registry(request, bus).record_eval(req.run_id, req.results, source=req.source)


@router.delete("/{run_id}", response_model=RunDeleted)
async def delete_run(run_id: str, request: Request, bus: Bus = Depends(get_bus)) -> RunDeleted:
    req = from_query(request, RunDeleteRequest, run_id=validate_id(run_id, "run_id"))
    return await registry(request, bus).delete(req.run_id, keep_artifacts=req.keep_artifacts, force=req.force)
