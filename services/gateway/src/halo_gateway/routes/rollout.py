"""Rollouts: sample N completions per prompt (small batches over RPC, large ones as a job).

``POST /api/v1/rollout/generate`` takes a ``halo.rpc.rollout-request.v1`` body (validated strictly:
an unknown field is a 400 naming it) and answers with the completions and the weights version
that produced them; ``POST /api/v1/rollout/load`` pre-loads or re-reads a model;
``POST /api/v1/rollout/jobs`` enqueues a ``halo.spec.rollout-job.v1`` and returns the job/run ids.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from halo_bus import Bus
from halo_clients import JobsClient, RolloutClient
from halo_common.errors import BadRequest, NotFound
from halo_common.ids import validate_id
from halo_schemas.base import describe_validation_error
from halo_schemas.jobs import JobStatus, JobSubmitted
from halo_schemas.rollout import RolloutJobSpec, RolloutLoaded, RolloutLoadRequest, RolloutRequest, RolloutResult
from pydantic import BaseModel, ValidationError

from halo_gateway.app import get_bus

router = APIRouter(tags=["rollout"])

#: Sampling (and a first model load) takes longer than a control-plane RPC.
MIN_TIMEOUT_S = 600.0


async def _strict(model: type[BaseModel], request: Request) -> None:
    """Bus messages tolerate unknown fields; an HTTP body must not (a typo would be silently dropped)."""
    try:
        model.model_validate(await request.json(), extra="forbid")
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise BadRequest(describe_validation_error(exc, what="request body"), param=param) from None


def _timeout(request: Request) -> float:
    return max(request.app.state.settings.rpc_timeout_s, MIN_TIMEOUT_S)


@router.post("/api/v1/rollout/generate", response_model=RolloutResult)
async def generate(body: RolloutRequest, request: Request, bus: Bus = Depends(get_bus)) -> RolloutResult:
    """Sample ``n`` completions for each prompt (one instance of the rollout service answers)."""
    await _strict(RolloutRequest, request)
    return await RolloutClient(bus, timeout=_timeout(request)).generate(body)


@router.post("/api/v1/rollout/load", response_model=RolloutLoaded)
async def load(body: RolloutLoadRequest, request: Request, bus: Bus = Depends(get_bus)) -> RolloutLoaded:
    """Load a model (+ adapter) into the rollout cache, or re-read its weights (``reload``)."""
    await _strict(RolloutLoadRequest, request)
    return await RolloutClient(bus, timeout=_timeout(request)).load(body)


@router.post("/api/v1/rollout/jobs", response_model=JobSubmitted, status_code=202)
async def submit_job(spec: RolloutJobSpec, bus: Bus = Depends(get_bus)) -> JobSubmitted:
    """Enqueue a large rollout; follow it with the run's events (the output JSONL path is in them)."""
    jobs = JobsClient(bus)
    return await jobs.submit(await jobs.route("generate"), spec)


@router.get("/api/v1/rollout/jobs/{job_id}", response_model=JobStatus)
async def job_status(job_id: str, bus: Bus = Depends(get_bus)) -> Any:
    """Current state of a rollout job (a malformed id is a 400 naming ``job_id``)."""
    status = await JobsClient(bus).status(validate_id(job_id, "job_id"))
    if status.service != "rollout":
        raise NotFound(f"no rollout job {job_id!r}", param="job_id")
    return status
