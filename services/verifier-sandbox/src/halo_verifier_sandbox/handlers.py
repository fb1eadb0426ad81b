"""Bus handlers: parse (done by the bus), call the engine, map. Thin on purpose."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from halo_schemas.verifiers import (
    InventoryRequest,
    SandboxInfo,
    VerifierInventory,
    VerifyBatchRequest,
    VerifyBatchResult,
    VerifyRequest,
    VerifyResult,
)

from halo_verifier_sandbox.core.replies import fit, fit_batch

if TYPE_CHECKING:
    from halo_verifier_sandbox.service import VerifierSandbox


async def verify(svc: VerifierSandbox, req: VerifyRequest) -> VerifyResult:
    result = await svc.engine.averify(req.spec, req.completion, req.context, use_cache=req.use_cache)
    return fit(result, svc.max_reply_bytes)


async def verify_batch(svc: VerifierSandbox, req: VerifyBatchRequest) -> VerifyBatchResult:
    start = time.monotonic()
    svc.metrics.batch_items.observe(len(req.items))
    results = fit_batch(await svc.engine.averify_batch(req.spec, req.items, use_cache=req.use_cache),
                        svc.max_reply_bytes)
    return VerifyBatchResult(
        results=results,
        duration_s=round(time.monotonic() - start, 6),
        cache_hits=sum(1 for r in results if r.cached),
        errors=sum(1 for r in results if r.error is not None),
    )


async def inventory(svc: VerifierSandbox, req: InventoryRequest) -> VerifierInventory:
    if req.reload_plugins:
        await asyncio.get_running_loop().run_in_executor(None, svc.load_plugins)
    sb = svc.engine.runtime.sandbox
    verifiers = await asyncio.get_running_loop().run_in_executor(None, svc.engine.registry.inventory,
                                                                 svc.engine.runtime)
    return VerifierInventory(
        verifiers=verifiers,
        broken_plugins=list(svc.engine.registry.problems),
        sandbox=SandboxInfo(mechanism=sb.mechanism.value if sb else None, isolation=sb.isolation if sb else [],
                            problem=svc.engine.runtime.sandbox_problem),
        workers=svc.engine.workers,
    )
