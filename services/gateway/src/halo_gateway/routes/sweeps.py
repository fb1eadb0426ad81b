"""Sweeps: Optuna searches over a training spec, each trial a training job (the sweeps service does the work).

* ``POST /api/v1/sweeps``                   body = ``SweepSpec`` -> ``SweepStarted`` (400 naming the field)
* ``GET  /api/v1/sweeps``                   -> ``SweepList`` newest first
* ``GET  /api/v1/sweeps/{sweep_id}``        -> ``SweepInfo`` (trials, best, parameter importances)
* ``POST /api/v1/sweeps/{sweep_id}/cancel`` -> ``SweepInfo``
* ``POST /api/v1/sweeps/{sweep_id}/resume`` -> ``SweepStarted``
* ``GET  /api/v1/sweeps/{sweep_id}/best``   -> ``SweepBest``
* ``POST /api/v1/sweeps/{sweep_id}/fork-best`` body = ``{"overrides": {...}, "name": ...}`` -> ``SweepForked``
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from halo_bus import Bus
from halo_clients.sweeps import SweepsClient
from halo_common.errors import BadRequest
from halo_common.ids import validate_id
from halo_schemas.methods import TRAINING_JOB_SPECS
from halo_schemas.sweeps import SweepBest, SweepForked, SweepInfo, SweepList, SweepStarted
from pydantic import ValidationError

from halo_gateway.app import get_bus
from halo_gateway.core.jobpolicy import check_job

router = APIRouter(tags=["sweeps"])


def _client(request: Request, bus: Bus) -> SweepsClient:
    return SweepsClient(bus, timeout=max(request.app.state.settings.rpc_timeout_s, 30.0))


@router.post("/api/v1/sweeps", response_model=SweepStarted, status_code=202)
async def create_sweep(request: Request, body: dict[str, Any] = Body(...), bus: Bus = Depends(get_bus)) -> SweepStarted:
    """Validate the sweep (search space, objective: 400 naming the field), apply this host's policy and preflight
    to its base spec as to any training job, and start it."""
    spec_cls = TRAINING_JOB_SPECS.get(str(body.get("method")))
    try:
        base = spec_cls.model_validate(body.get("base")) if spec_cls and isinstance(body.get("base"), dict) else None
    except ValidationError:
        base = None  # the sweeps service names the field
    if base is not None:
        check_job(base, request.app.state.settings, preflight=True)
    return await _client(request, bus).create(body)


@router.get("/api/v1/sweeps", response_model=SweepList)
async def list_sweeps(request: Request, limit: int = Query(50, ge=1, le=1000, description="At most this many."),
                      bus: Bus = Depends(get_bus)) -> SweepList:
    return await _client(request, bus).list(limit)


@router.get("/api/v1/sweeps/{sweep_id}", response_model=SweepInfo)
async def show_sweep(sweep_id: str, request: Request, bus: Bus = Depends(get_bus)) -> SweepInfo:
    return await _client(request, bus).show(validate_id(sweep_id, "sweep_id"))


@router.post("/api/v1/sweeps/{sweep_id}/cancel", response_model=SweepInfo)
async def cancel_sweep(sweep_id: str, request: Request, bus: Bus = Depends(get_bus)) -> SweepInfo:
    return await _client(request, bus).cancel(validate_id(sweep_id, "sweep_id"))


@router.post("/api/v1/sweeps/{sweep_id}/resume", response_model=SweepStarted, status_code=202)
async def resume_sweep(sweep_id: str, request: Request, bus: Bus = Depends(get_bus)) -> SweepStarted:
    return await _client(request, bus).resume(validate_id(sweep_id, "sweep_id"))


@router.get("/api/v1/sweeps/{sweep_id}/best", response_model=SweepBest)
async def best_trial(sweep_id: str, request: Request, bus: Bus = Depends(get_bus)) -> SweepBest:
    return await _client(request, bus).best(validate_id(sweep_id, "sweep_id"))


@router.post("/api/v1/sweeps/{sweep_id}/fork-best", response_model=SweepForked, status_code=202)
async def fork_best(sweep_id: str, request: Request, body: dict[str, Any] = Body(default_factory=dict),
                    bus: Bus = Depends(get_bus)) -> SweepForked:
    """A full training run from the best trial's spec; ``overrides`` (dotted path -> value) change it."""
    overrides, name = body.get("overrides") or {}, body.get("name")
    unknown = sorted(set(body) - {"overrides", "name"})
    if unknown or not isinstance(overrides, dict) or not isinstance(name, str | None):
        field = unknown[0] if unknown else ("overrides" if not isinstance(overrides, dict) else "name")
        raise BadRequest(f"{field}: expected overrides (an object of dotted path -> value) and an optional name",
                         param=field)
    return await _client(request, bus).fork_best(validate_id(sweep_id, "sweep_id"), overrides, name)
