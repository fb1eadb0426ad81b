"""Python client of verifier-sandbox over the bus, for the gateway, trainers (GRPO, RAFT), eval and synthesis.

Usage::

    from halo_clients import VerifierClient

    client = VerifierClient(bus)
    r = await client.verify("gcc", completion, VerifyContext(expected_output="3\\n"))
    rs = await client.verify_batch(VerifierSpec(name="humaneval"), [VerifyItem(completion=c, context=ctx), ...])
    rewards = [r.reward for r in rs]

``spec`` is a :class:`VerifierSpec`, a dict ``{"name": ..., "params": {...}}`` or just a name.
Large batches are split into chunks that fit in a bus message and sent concurrently (several
service instances share them through the queue group); results come back in item order. A bad
spec raises :class:`~halo_common.errors.BadRequest` / :class:`~halo_common.errors.NotFound`; a
service that is not running raises :class:`~halo_common.errors.Unavailable`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from halo_bus import Bus, subjects
from halo_schemas.verifiers import (
    InventoryRequest,
    VerifierInventory,
    VerifierSpec,
    VerifyBatchRequest,
    VerifyBatchResult,
    VerifyContext,
    VerifyItem,
    VerifyRequest,
    VerifyResult,
)

SpecLike = VerifierSpec | Mapping[str, Any] | str
ItemLike = VerifyItem | tuple[str, VerifyContext | None] | str


def as_spec(spec: SpecLike) -> VerifierSpec:
    if isinstance(spec, VerifierSpec):
        return spec
    if isinstance(spec, str):
        return VerifierSpec(name=spec)
    return VerifierSpec.model_validate(dict(spec))


def as_item(item: ItemLike) -> VerifyItem:
    if isinstance(item, VerifyItem):
        return item
    if isinstance(item, str):
        return VerifyItem(completion=item)
    completion, context = item
    return VerifyItem(completion=completion, context=context or VerifyContext())


def chunk(items: Sequence[VerifyItem], max_items: int, max_bytes: int) -> list[list[VerifyItem]]:
    """Split ``items`` in order into chunks of at most ``max_items`` and about ``max_bytes`` of JSON."""
    out: list[list[VerifyItem]] = []
    cur: list[VerifyItem] = []
    size = 0
    for it in items:
        n = len(it.model_dump_json(exclude_defaults=True))
        if cur and (len(cur) >= max_items or size + n > max_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(it)
        size += n
    if cur:
        out.append(cur)
    return out


class VerifierClient:
    """Typed access to verifier-sandbox. ``timeout_s`` bounds one request; batches add
    ``per_item_timeout_s`` per item of a chunk (capped at one hour)."""

    def __init__(self, bus: Bus, *, timeout_s: float = 60.0, per_item_timeout_s: float = 30.0,
                 chunk_items: int = 96, chunk_bytes: int = 400_000) -> None:
        self.bus = bus
        self.timeout_s = timeout_s
        self.per_item_timeout_s = per_item_timeout_s
        self.chunk_items = chunk_items
        self.chunk_bytes = chunk_bytes

    async def verify(self, spec: SpecLike, completion: str, context: VerifyContext | None = None, *,
                     use_cache: bool = True, timeout_s: float | None = None) -> VerifyResult:
        """Verify one completion."""
        req = VerifyRequest(spec=as_spec(spec), completion=completion, context=context or VerifyContext(),
                            use_cache=use_cache)
        return await self.bus.request(subjects.VERIFY, req, VerifyResult, timeout=timeout_s or self.timeout_s)

    async def verify_batch(self, spec: SpecLike, items: Sequence[ItemLike], *, use_cache: bool = True,
                           timeout_s: float | None = None) -> list[VerifyResult]:
        """Verify many completions with one verifier; results in the order of ``items``."""
        return (await self.verify_batch_result(spec, items, use_cache=use_cache, timeout_s=timeout_s)).results

    async def verify_batch_result(self, spec: SpecLike, items: Sequence[ItemLike], *, use_cache: bool = True,
                                  timeout_s: float | None = None) -> VerifyBatchResult:
        """Like :meth:`verify_batch`, with the batch's wall time, cache hits and error count."""
        start = time.monotonic()
        s = as_spec(spec)
        its = [as_item(i) for i in items]
        parts = chunk(its, self.chunk_items, self.chunk_bytes)

        async def send(part: list[VerifyItem]) -> VerifyBatchResult:
            t = timeout_s or min(3600.0, self.timeout_s + self.per_item_timeout_s * len(part))
            return await self.bus.request(subjects.VERIFY_BATCH, VerifyBatchRequest(spec=s, items=part,
                                                                                   use_cache=use_cache),
                                          VerifyBatchResult, timeout=t)

        replies = await asyncio.gather(*(send(p) for p in parts))
        return VerifyBatchResult(results=[r for rep in replies for r in rep.results],
                                 duration_s=round(time.monotonic() - start, 6),
                                 cache_hits=sum(rep.cache_hits for rep in replies),
                                 errors=sum(rep.errors for rep in replies))

    async def inventory(self, *, reload_plugins: bool = False) -> VerifierInventory:
        """Registered verifiers (with parameter schemas and availability) and the sandbox in use."""
        return await self.bus.request(subjects.VERIFIER_INVENTORY, InventoryRequest(reload_plugins=reload_plugins),
                                      VerifierInventory, timeout=self.timeout_s)
