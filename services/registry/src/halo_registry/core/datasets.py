"""Datasets in the registry: register (idempotent on path + sha256), get, list.

    info = register(db, DatasetRegisterRequest(path=..., rows=120, sha256=..., parents=["ds-…"]))
    get(db, "ds-…")  /  get(db, "dataset:ds-…")
"""

from __future__ import annotations

from typing import Any

from halo_common.errors import BadRequest, NotFound
from halo_common.ids import new_id
from halo_schemas.base import utcnow
from halo_schemas.data import DATASET_PREFIX, DatasetInfo, DatasetList, DatasetListRequest, DatasetRegisterRequest
from sqlalchemy import select

from halo_registry.core.db import Database, datasets

_FIELDS = ("dataset_id", "name", "path", "format", "rows", "sha256", "size_bytes", "recipe", "parents", "run_id",
           "stats", "created_at")


def _info(row: Any) -> DatasetInfo:
    m = row._mapping
    return DatasetInfo(**{f: m[f] for f in _FIELDS if m[f] is not None})


def register(db: Database, req: DatasetRegisterRequest) -> DatasetInfo:
    """Insert the dataset, or return the one already recorded for the same path and content."""
    with db.write() as conn:
        existing = conn.execute(select(datasets).where(datasets.c.path == req.path,
                                                       datasets.c.sha256 == req.sha256)).first()
        if existing is not None:
            return _info(existing)
        if req.parents:
            found = {r[0] for r in conn.execute(select(datasets.c.dataset_id).where(
                datasets.c.dataset_id.in_(req.parents)))}
            missing = [p for p in req.parents if p not in found]
            if missing:
                raise BadRequest(f"unknown parent dataset(s): {', '.join(missing)}", param="parents")
        values = {"dataset_id": new_id("ds"), "name": req.name, "path": req.path, "format": req.format,
                  "rows": req.rows, "sha256": req.sha256, "size_bytes": req.size_bytes, "recipe": req.recipe,
                  "parents": req.parents, "run_id": req.run_id, "stats": req.stats, "created_at": utcnow()}
        conn.execute(datasets.insert().values(**values))
        return DatasetInfo(**{k: v for k, v in values.items() if v is not None})


def get(db: Database, dataset_id: str) -> DatasetInfo:
    dataset_id = dataset_id.removeprefix(DATASET_PREFIX)
    with db.read() as conn:
        row = conn.execute(select(datasets).where(datasets.c.dataset_id == dataset_id)).first()
    if row is None:
        raise NotFound(f"no dataset {dataset_id!r}", param="dataset_id")
    return _info(row)


def list_datasets(db: Database, req: DatasetListRequest) -> DatasetList:
    q = select(datasets).order_by(datasets.c.created_at.desc(), datasets.c.pk.desc()).limit(req.limit)
    if req.name:
        q = q.where(datasets.c.name == req.name)
    if req.run_id:
        q = q.where(datasets.c.run_id == req.run_id)
    with db.read() as conn:
        return DatasetList(datasets=[_info(r) for r in conn.execute(q)])
