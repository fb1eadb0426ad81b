"""What the Train page builds its form from.

* ``GET /api/v1/jobs/methods``              -> the training methods
* ``GET /api/v1/jobs/{method}/schema``      -> the method's spec JSON Schema (every field, default, description)
* ``GET /api/v1/models/catalog?backend=cuda&memory_gb=24`` -> catalog models, support and recommended settings
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from halo_schemas.methods import TRAINING_JOB_SPECS
from pydantic import BaseModel, Field

from halo_gateway.core.catalog import CatalogView, catalog_view, method_schema
from halo_gateway.routes.jobs import METHOD

router = APIRouter(tags=["jobs"])


class MethodList(BaseModel):
    methods: list[str] = Field(description="Training methods, each with a spec schema and a submit route.")


@router.get("/api/v1/jobs/methods", response_model=MethodList)
async def methods() -> MethodList:
    return MethodList(methods=list(TRAINING_JOB_SPECS))


@router.get("/api/v1/jobs/{method}/schema", response_model=dict[str, Any])
async def spec_schema(method: str = METHOD) -> dict[str, Any]:
    """The JSON Schema of the method's spec: what ``POST /api/v1/jobs/{method}`` accepts."""
    return method_schema(method)


@router.get("/api/v1/models/catalog", response_model=CatalogView, tags=["models"])
async def models_catalog(backend: str | None = Query(None, description="cuda | rocm | mps | mlx | cpu."),
                         memory_gb: float | None = Query(None, description="Memory budget for recommendations, GiB.")
                         ) -> CatalogView:
    return catalog_view(backend, memory_gb)
