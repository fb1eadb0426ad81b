"""Keeping replies within one bus message: a verification's details (stdout, per-test output, metadata) can be
megabytes, the bus carries about one. Rewards, stages and counts are never trimmed — only the details."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from halo_common.errors import BadRequest
from halo_schemas.verifiers import VerifyResult

#: Room left in a batch reply for the envelope around the results.
ENVELOPE_BYTES = 1000


def fit_batch(results: Sequence[VerifyResult], limit: int) -> list[VerifyResult]:
    """``results`` trimmed so that together they serialise under ``limit`` bytes: the largest are trimmed first.
    Raises BadRequest when even fully trimmed results do not fit (the caller must send fewer items)."""
    results = list(results)
    sizes = [len(r.model_dump_json()) for r in results]
    if sum(sizes) <= limit - ENVELOPE_BYTES:
        return results
    per_item = max(300, (limit - ENVELOPE_BYTES) // len(results))
    results = [fit(r, per_item) if n > per_item else r for r, n in zip(results, sizes, strict=True)]
    if sum(len(r.model_dump_json()) for r in results) > limit:
        raise BadRequest(f"a batch of {len(results)} items does not fit in one bus reply; send fewer items per "
                         "request (VerifierClient splits batches automatically)", param="items")
    return results


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
