"""Evaluation: lm-eval jobs, probes and pass@k (the eval service; see docs/eval.md).

* ``POST /api/v1/eval/jobs``   body ``halo.spec.eval.v1``   -> ``JobSubmitted`` (tasks and model checked first)
* ``POST /api/v1/eval/probe``  body ``halo.spec.probe.v1``  -> ``JobSubmitted``
* ``POST /api/v1/eval/passk``  body ``halo.spec.passk.v1``  -> ``JobSubmitted``
* ``GET  /api/v1/eval/tasks``  -> curated groups and the offline suite

Follow a job with ``GET /api/v1/jobs/{job_id}`` and ``GET /api/v1/runs/{run_id}/events``.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from halo_bus import Bus
from halo_clients.eval import EvalClient
from halo_schemas.eval import EvalJobSpec, EvalTaskList, PassKJobSpec, ProbeJobSpec
from halo_schemas.jobs import JobSubmitted

from halo_gateway.app import get_bus

router = APIRouter(tags=["eval"])


@router.post("/api/v1/eval/jobs", response_model=JobSubmitted, status_code=202)
async def submit_eval(spec: EvalJobSpec, bus: Bus = Depends(get_bus)) -> JobSubmitted:
    """Queue an lm-eval job; an unknown task (with close matches) or a missing model is a 400/404 first."""
    return await EvalClient(bus).submit_eval(spec)


@router.post("/api/v1/eval/probe", response_model=JobSubmitted, status_code=202)
async def submit_probe(spec: ProbeJobSpec, bus: Bus = Depends(get_bus)) -> JobSubmitted:
    """Queue a probe (a short evaluation diffed against a baseline)."""
    return await EvalClient(bus).submit_probe(spec)


@router.post("/api/v1/eval/passk", response_model=JobSubmitted, status_code=202)
async def submit_passk(spec: PassKJobSpec, bus: Bus = Depends(get_bus)) -> JobSubmitted:
    """Queue a pass@k benchmark (the dataset is checked first: missing, empty or malformed is named)."""
    return await EvalClient(bus).submit_passk(spec)


@router.get("/api/v1/eval/tasks", response_model=EvalTaskList)
async def tasks(bus: Bus = Depends(get_bus)) -> EvalTaskList:
    """Curated task groups and the built-in offline suite."""
    return await EvalClient(bus).task_list()
