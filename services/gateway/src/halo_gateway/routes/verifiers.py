"""Verifiers: inventory, verify one completion, verify a batch (served by verifier-sandbox)."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Request
from halo_bus import Bus, subjects
from halo_schemas.verifiers import (
    InventoryRequest,
    VerifierInventory,
    VerifyBatchRequest,
    VerifyBatchResult,
    VerifyItem,
    VerifyRequest,
    VerifyResult,
)

from halo_gateway.app import get_bus

router = APIRouter()

# A bus message is at most 1 MiB: batches go to the service in chunks (in parallel; several
# verifier-sandbox instances share them through the queue group).
CHUNK_ITEMS = 96
CHUNK_BYTES = 400_000


def _chunks(items: list[VerifyItem]) -> list[list[VerifyItem]]:
    out: list[list[VerifyItem]] = [[]]
    size = 0
    for it in items:
        n = len(it.model_dump_json(exclude_defaults=True))
        if out[-1] and (len(out[-1]) >= CHUNK_ITEMS or size + n > CHUNK_BYTES):
            out.append([])
            size = 0
        out[-1].append(it)
        size += n
    return out


@router.get("/api/v1/verifiers", response_model=VerifierInventory, tags=["verifiers"])
async def list_verifiers(request: Request, reload_plugins: bool = False, bus: Bus = Depends(get_bus)) -> VerifierInventory:
    """Every registered verifier (origin, parameters + JSON schema, availability), broken plugins, the sandbox."""
    timeout = request.app.state.settings.rpc_timeout_s
    return await bus.request(subjects.VERIFIER_INVENTORY, InventoryRequest(reload_plugins=reload_plugins),
                             VerifierInventory, timeout=timeout)


@router.post("/api/v1/verify", response_model=VerifyResult, tags=["verifiers"])
async def verify(body: VerifyRequest, request: Request, bus: Bus = Depends(get_bus)) -> VerifyResult:
    """Verify one completion: ``{"spec": {"name", "params"}, "completion", "context"}``."""
    timeout = max(request.app.state.settings.rpc_timeout_s, 300.0)
    return await bus.request(subjects.VERIFY, body, VerifyResult, timeout=timeout)


@router.post("/api/v1/verify/batch", response_model=VerifyBatchResult, tags=["verifiers"])
async def verify_batch(body: VerifyBatchRequest, request: Request, bus: Bus = Depends(get_bus)) -> VerifyBatchResult:
    """Verify many completions with one verifier; results in item order, per-item errors isolated."""
    start = time.monotonic()
    base = request.app.state.settings.rpc_timeout_s
    parts = _chunks(list(body.items)) if body.items else []
    replies = await asyncio.gather(*(
        bus.request(subjects.VERIFY_BATCH, VerifyBatchRequest(spec=body.spec, items=p, use_cache=body.use_cache),
                    VerifyBatchResult, timeout=min(3600.0, base + 30.0 * len(p)))
        for p in parts
    ))
    results = [r for rep in replies for r in rep.results]
    return VerifyBatchResult(results=results, duration_s=round(time.monotonic() - start, 6),
                             cache_hits=sum(rep.cache_hits for rep in replies), errors=sum(rep.errors for rep in replies))
