"""Verifiers: inventory, verify one completion, verify a batch (served by verifier-sandbox through
:class:`halo_clients.VerifierClient`, which splits large batches into bus-sized chunks)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from halo_bus import Bus
from halo_clients import VerifierClient
from halo_schemas.verifiers import VerifierInventory, VerifyBatchRequest, VerifyBatchResult, VerifyRequest, VerifyResult

from halo_gateway.app import get_bus

router = APIRouter()


def _client(request: Request, bus: Bus) -> VerifierClient:
    return VerifierClient(bus, timeout_s=request.app.state.settings.rpc_timeout_s)


@router.get("/api/v1/verifiers", response_model=VerifierInventory, tags=["verifiers"])
async def list_verifiers(request: Request, reload_plugins: bool = False, bus: Bus = Depends(get_bus)) -> VerifierInventory:
    """Every registered verifier (origin, parameters + JSON schema, availability), broken plugins, the sandbox."""
    return await _client(request, bus).inventory(reload_plugins=reload_plugins)


@router.post("/api/v1/verify", response_model=VerifyResult, tags=["verifiers"])
async def verify(body: VerifyRequest, request: Request, bus: Bus = Depends(get_bus)) -> VerifyResult:
    """Verify one completion: ``{"spec": {"name", "params"}, "completion", "context"}``."""
    timeout = max(request.app.state.settings.rpc_timeout_s, 300.0)
    return await _client(request, bus).verify(body.spec, body.completion, body.context, use_cache=body.use_cache,
                                              timeout_s=timeout)


@router.post("/api/v1/verify/batch", response_model=VerifyBatchResult, tags=["verifiers"])
async def verify_batch(body: VerifyBatchRequest, request: Request, bus: Bus = Depends(get_bus)) -> VerifyBatchResult:
    """Verify many completions with one verifier; results in item order, per-item errors isolated."""
    return await _client(request, bus).verify_batch_result(body.spec, list(body.items), use_cache=body.use_cache)
