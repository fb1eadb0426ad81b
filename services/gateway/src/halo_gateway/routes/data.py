"""Data pipeline: submit steps and recipes to the data service, inspect files, list registered datasets.

``POST /api/v1/data/{synthesize|dedup|score|filter|decontaminate|recipe}`` takes the step's spec
(``halo.spec.data-<op>.v1``) and returns the job/run ids (follow them with ``/api/v1/jobs/{id}`` and the run's
events; the finished event's summary names the registered ``dataset_id``). ``POST /api/v1/data/inspect`` reports
on a file; ``GET /api/v1/data/datasets[/{id}]`` reads the registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Query, Request
from halo_bus import Bus
from halo_clients import DataClient, RegistryClient
from halo_clients.data import SPEC_OF
from halo_schemas.data import DatasetInfo, DatasetList, DatasetListRequest, InspectReport, InspectRequest
from halo_schemas.jobs import JobSubmitted

from halo_gateway.app import get_bus

router = APIRouter(tags=["data"])


def _submitter(spec_cls: type) -> Callable[..., Awaitable[JobSubmitted]]:
    async def submit(spec: spec_cls, bus: Bus = Depends(get_bus)) -> JobSubmitted:  # type: ignore[valid-type]
        return await DataClient(bus).submit(spec)

    # Under `from __future__ import annotations` the annotation is the string "spec_cls": give FastAPI the class.
    submit.__annotations__["spec"] = spec_cls
    submit.__doc__ = f"Queue a data job ({spec_cls.schema_id}); the output is registered as a dataset."
    return submit


for _job_type, _spec in SPEC_OF.items():
    _op = _job_type.removeprefix("data-")
    router.add_api_route(f"/api/v1/data/{_op}", _submitter(_spec), methods=["POST"], response_model=JobSubmitted,
                         status_code=202, name=f"data_{_op}", summary=f"Submit a data {_op} job")


@router.post("/api/v1/data/inspect", response_model=InspectReport)
async def inspect(body: InspectRequest, request: Request, bus: Bus = Depends(get_bus)) -> InspectReport:
    """Counts, formats, length histogram and samples of a file (or ``dataset:<id>``) the data service can read."""
    return await DataClient(bus, timeout=max(request.app.state.settings.rpc_timeout_s, 300.0)).inspect(body)


@router.get("/api/v1/data/datasets", response_model=DatasetList)
async def datasets(name: str | None = None, run_id: str | None = None, limit: int = Query(50, ge=1, le=1000),
                   bus: Bus = Depends(get_bus)) -> DatasetList:
    """Registered datasets, newest first."""
    return await RegistryClient(bus).datasets(DatasetListRequest(name=name, run_id=run_id, limit=limit))


@router.get("/api/v1/data/datasets/{dataset_id}", response_model=DatasetInfo)
async def dataset(dataset_id: str, bus: Bus = Depends(get_bus)) -> DatasetInfo:
    """One dataset: path, rows, sha256, the recipe step that made it and its parents."""
    return await RegistryClient(bus).dataset(dataset_id)
