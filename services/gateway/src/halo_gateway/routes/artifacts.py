"""convert / merge jobs (run on the serve service) and the artifacts the registry recorded.

* ``GET  /api/v1/convert/formats``   -> ``halo.rpc.convert-formats.v1``: what serve's host can export
* ``POST /api/v1/convert``           body ``halo.job.convert.v1``        -> ``JobSubmitted`` (202)
* ``POST /api/v1/merge/bake``        body ``halo.job.merge-bake.v1``     -> ``JobSubmitted`` (202)
* ``POST /api/v1/merge/combine``     body ``halo.job.merge-combine.v1``  -> ``JobSubmitted`` (202)
* ``GET  /api/v1/artifacts``         ``?kind=&format=&status=&run_id=&limit=`` -> ``{"artifacts": [...]}``
* ``GET  /api/v1/artifacts/{id}``    -> one ``ArtifactInfo`` (quant, status, verify figures, parents)
* ``DELETE /api/v1/artifacts/{id}``  ``?keep_files=false`` also deletes the files (only inside HALO_HOME)

Follow a submitted job with ``GET /api/v1/runs/{run_id}/events`` (its ``artifact-added`` event names
the output; ``finished.summary`` is the manifest). Paths in a spec follow the host's policy: absolute,
and confined to HALO_HOME and ``HALO_GATEWAY_DATA_ROOTS`` when the gateway is exposed.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from halo_bus import Bus
from halo_clients import RegistryClient, ServeClient
from halo_common.specpolicy import check_spec_policy
from halo_schemas.convert import ConvertFormats, ConvertSpec, MergeBakeSpec, MergeCombineSpec
from halo_schemas.jobs import JobSubmitted
from halo_schemas.registry import ARTIFACT_ID_MAX, ArtifactDeleted, ArtifactInfo, ArtifactList, ArtifactSearch

from halo_gateway.app import get_bus
from halo_gateway.core.jobpolicy import confinement_roots

router = APIRouter(tags=["artifacts"])


def _check_paths(request: Request, refs: list[tuple[str, str | None]]) -> None:
    """The host's path policy for every source/output a spec names (400 relative, 403 outside the roots)."""
    settings = request.app.state.settings
    named = [(p, v) for p, v in refs if v and not v.startswith("run:")]  # run:<id> resolves under HALO_HOME
    check_spec_policy(code_requests=[], model_refs=named, data_refs=[], allow_remote_code=False,
                      paths=settings.paths, roots=confinement_roots(settings))


def _serve(request: Request, bus: Bus) -> ServeClient:
    return ServeClient(bus, timeout=request.app.state.settings.rpc_timeout_s)


@router.get("/api/v1/convert/formats", response_model=ConvertFormats)
async def convert_formats(request: Request, bus: Bus = Depends(get_bus)) -> ConvertFormats:
    """format -> quant -> null (available) or the reason it is not, on the serve service's host."""
    return await _serve(request, bus).convert_formats()


@router.post("/api/v1/convert", response_model=JobSubmitted, status_code=202)
async def convert(spec: ConvertSpec, request: Request, bus: Bus = Depends(get_bus)) -> JobSubmitted:
    """Queue an export (hf | gguf | mlx x quant), verified against its source unless ``verify`` is false."""
    _check_paths(request, [("source", spec.source), ("out", spec.out)])
    return await _serve(request, bus).submit_convert(spec)


@router.post("/api/v1/merge/bake", response_model=JobSubmitted, status_code=202)
async def merge_bake(spec: MergeBakeSpec, request: Request, bus: Bus = Depends(get_bus)) -> JobSubmitted:
    """Queue baking one adapter into its base (an HF checkpoint)."""
    _check_paths(request, [("adapter", spec.adapter), ("base", spec.base), ("out", spec.out)])
    return await _serve(request, bus).submit_bake(spec)


@router.post("/api/v1/merge/combine", response_model=JobSubmitted, status_code=202)
async def merge_combine(spec: MergeCombineSpec, request: Request, bus: Bus = Depends(get_bus)) -> JobSubmitted:
    """Queue combining N adapters (linear | ties | dare_linear | dare_ties | magnitude_prune)."""
    refs = [(f"adapters[{i}]", a) for i, a in enumerate(spec.adapters)]
    _check_paths(request, [*refs, ("base", spec.base), ("out", spec.out)])
    return await _serve(request, bus).submit_combine(spec)


@router.get("/api/v1/artifacts", response_model=ArtifactList)
async def list_artifacts(kind: str | None = Query(None, description="export | model | adapter | samples…"),
                         format: str | None = Query(None, description="hf | gguf | mlx | peft…"),
                         status: str | None = Query(None, description="verified | failed | unverified"),
                         run_id: str | None = Query(None, description="Only this run's artifacts."),
                         limit: int = Query(50, ge=1, le=1000, description="At most this many."),
                         bus: Bus = Depends(get_bus)) -> ArtifactList:
    search = ArtifactSearch(kind=kind, format=format, status=status, run_id=run_id, limit=limit)
    return await RegistryClient(bus).artifacts(search)


#: The ``{artifact_id}`` path parameter: a database integer (a larger one is a 400 naming it).
ARTIFACT_ID = PathParam(ge=1, le=ARTIFACT_ID_MAX, description="Artifact id.")


@router.get("/api/v1/artifacts/{artifact_id}", response_model=ArtifactInfo)
async def show_artifact(artifact_id: int = ARTIFACT_ID, bus: Bus = Depends(get_bus)) -> ArtifactInfo:
    return await RegistryClient(bus).artifact(artifact_id)


@router.delete("/api/v1/artifacts/{artifact_id}", response_model=ArtifactDeleted)
async def delete_artifact(artifact_id: int = ARTIFACT_ID, keep_files: bool = Query(True, description="Keep the files on disk."),
                          bus: Bus = Depends(get_bus)) -> ArtifactDeleted:
    return await RegistryClient(bus).delete_artifact(artifact_id, keep_files=keep_files)
