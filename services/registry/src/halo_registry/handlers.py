"""RPC handlers: each parses nothing (the bus already validated the request model), calls the
store in a worker thread, and maps database failures to HaloErrors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from halo_common.errors import Conflict, Unavailable
from halo_schemas.data import DatasetListRequest, DatasetRef, DatasetRegisterRequest
from halo_schemas.registry import (
    ArtifactDeleteRequest,
    ArtifactRef,
    ArtifactSearch,
    EvalGridRequest,
    EvalRecordRequest,
    RunBundleRequest,
    RunCompareRequest,
    RunCostRequest,
    RunDeleteRequest,
    RunImportRequest,
    RunMetricsRequest,
    RunNoteRequest,
    RunRef,
    RunSearch,
    RunTagRequest,
)
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc

from halo_registry.core.store import RegistryStore


def threaded(fn: Callable[[Any], BaseModel]) -> Callable[[Any], Awaitable[BaseModel]]:
    """An async handler running ``fn(req)`` in a thread, with database errors mapped once here."""

    async def handler(req: Any) -> BaseModel:
        try:
            return await asyncio.to_thread(fn, req)
        except sa_exc.IntegrityError as exc:
            raise Conflict(f"conflicting write: {exc.orig}") from None
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError) as exc:
            raise Unavailable(f"database unavailable: {exc.orig}") from None

    return handler


def endpoints(store: RegistryStore) -> list[tuple[str, Callable[[Any], Awaitable[BaseModel]], type[BaseModel]]]:
    """(verb, handler, request type) for every registry RPC (subjects in halo_bus.subjects)."""
    return [
        ("runs-search", threaded(store.search), RunSearch),
        ("run-get", threaded(lambda r: store.get(r.run_id)), RunRef),
        ("run-metrics", threaded(store.metrics), RunMetricsRequest),
        ("runs-compare", threaded(store.compare), RunCompareRequest),
        ("eval-grid", threaded(store.grid), EvalGridRequest),
        ("eval-record", threaded(store.record_eval), EvalRecordRequest),
        ("run-tag", threaded(store.tag), RunTagRequest),
        ("run-note", threaded(store.note), RunNoteRequest),
        ("run-delete", threaded(store.delete), RunDeleteRequest),
        ("run-cost", threaded(store.cost), RunCostRequest),
        ("run-bundle", threaded(store.bundle), RunBundleRequest),
        ("run-import", threaded(store.import_bundle), RunImportRequest),
        ("run-replay", threaded(lambda r: store.replay(r.run_id)), RunRef),
        ("artifacts-search", threaded(store.artifacts), ArtifactSearch),
        ("artifact-get", threaded(lambda r: store.artifact(r.id)), ArtifactRef),
        ("artifact-delete", threaded(store.delete_artifact), ArtifactDeleteRequest),
        ("dataset-register", threaded(store.register_dataset), DatasetRegisterRequest),
        ("dataset-get", threaded(lambda r: store.dataset(r.dataset_id)), DatasetRef),
        ("dataset-list", threaded(store.list_datasets), DatasetListRequest),
    ]
