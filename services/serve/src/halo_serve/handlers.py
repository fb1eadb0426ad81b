"""Bus handlers of serve: thin (parse, call the engine on its thread, map)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from halo_common.errors import BadRequest, NotFound
from halo_schemas.serve import (
    ServeInfo,
    ServeInfoRequest,
    ServeListRequest,
    ServeLoadRequest,
    ServeModel,
    ServeModelList,
    ServeUnloadRequest,
)

from halo_serve.core import control

if TYPE_CHECKING:
    from halo_serve.service import Serve


async def load(svc: Serve, req: ServeLoadRequest) -> ServeModel:
    if not req.model and not req.adapter:
        raise BadRequest("give a model or an adapter", param="model")
    spec = control.register(svc.engine.catalog, req.id, req.model, req.adapter, req.format, req.backend)
    if req.load:
        await svc.engine.call(svc.engine.ensure_loaded, spec.id)
    return control.model_info(svc.engine, spec.id)


async def unload(svc: Serve, req: ServeUnloadRequest) -> ServeModelList:
    if svc.engine.catalog.get(req.id) is None:
        raise NotFound(f"unknown model id {req.id!r}", param="id")
    await svc.engine.call(svc.engine.unload, req.id)
    if req.forget:
        svc.engine.catalog.unregister(req.id)
    return control.model_list(svc.engine)


async def list_models(svc: Serve, _req: ServeListRequest) -> ServeModelList:
    return control.model_list(svc.engine)


async def info(svc: Serve, _req: ServeInfoRequest) -> ServeInfo:
    return ServeInfo(url=svc.url, version=svc.version, backends=svc.backends)
