"""Bus handlers: parse (done by the bus), call the engine, map. Thin on purpose."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from halo_common.errors import BadRequest
from halo_schemas.verifiers import (
    InventoryRequest,
    SandboxInfo,
    VerifierInventory,
    VerifyBatchRequest,
    VerifyBatchResult,
    VerifyRequest,
    VerifyResult,
)

if TYPE_CHECKING:
    from halo_verifier_sandbox.service import VerifierSandbox


async def verify(svc: VerifierSandbox, req: VerifyRequest) -> VerifyResult:
    result = await svc.engine.averify(req.spec, req.completion, req.context, use_cache=req.use_cache)
    return fit(result, svc.max_reply_bytes)


async def verify_batch(svc: VerifierSandbox, req: VerifyBatchRequest) -> VerifyBatchResult:
    start = time.monotonic()
    svc.metrics.batch_items.observe(len(req.items))
    results = await svc.engine.averify_batch(req.spec, req.items, use_cache=req.use_cache)
    sizes = [len(r.model_dump_json()) for r in results]
    if sum(sizes) > svc.max_reply_bytes - 1000:
        # Too big for one bus message: trim the details of the largest results first.
        per_item = max(300, (svc.max_reply_bytes - 1000) // len(results))
        results = [fit(r, per_item) if n > per_item else r for r, n in zip(results, sizes, strict=True)]
        size = sum(len(r.model_dump_json()) for r in results)
        if size > svc.max_reply_bytes:
            raise BadRequest(f"a batch of {len(results)} items does not fit in one bus reply; send fewer items per "
                             "request (VerifierClient splits batches automatically)", param="items")
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


def _shrink(value: Any, text_limit: int, list_limit: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= text_limit else value[:text_limit] + "…"
    if isinstance(value, list):
        return [_shrink(v, text_limit, list_limit) for v in value[:list_limit]]
    if isinstance(value, dict):
        return {k: _shrink(v, text_limit, list_limit) for k, v in value.items()}
    return value


def fit(result: VerifyResult, limit: int) -> VerifyResult:
    """``result`` with its details trimmed (long strings, long lists) until it serialises under
    ``limit`` bytes; reward, stage and counts are never touched."""
    if len(result.model_dump_json()) <= limit:
        return result
    for text_limit, list_limit in ((500, 50), (200, 20), (80, 5), (0, 0)):
        details = _shrink(result.details, text_limit, list_limit)
        if text_limit == 0:
            details = {k: v for k, v in result.details.items() if isinstance(v, int | float | bool) or v is None}
        trimmed = result.model_copy(update={"details": {**details, "truncated": True},
                                            "error": (result.error or "")[:300] or None})
        if len(trimmed.model_dump_json()) <= limit:
            return trimmed
    return trimmed
