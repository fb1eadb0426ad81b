"""Model control shared by the bus handlers and start-up: register ids, describe them."""

from __future__ import annotations

from halo_common.errors import HaloError
from halo_schemas.serve import ServeModel, ServeModelList

from halo_serve.core.backends import BACKENDS, backend_class
from halo_serve.core.engine import Engine
from halo_serve.core.models import ModelCatalog, ModelSpec


def parse_assignment(text: str) -> tuple[str | None, str]:
    """``"ID=PATH"`` -> (ID, PATH); ``"PATH"`` -> (None, PATH). ``run:<id>`` stays whole."""
    if "=" in text:
        name, _, value = text.partition("=")
        return name.strip(), value.strip()
    return None, text.strip()


def register(catalog: ModelCatalog, model_id: str | None, model: str | None, adapter: str | None,
             fmt: str = "auto", backend: str | None = None) -> ModelSpec:
    """Register a base model or an adapter (over ``model`` when given) and return its spec."""
    if adapter:
        base_id = None
        if model:
            base_id = catalog.get(model).id if catalog.get(model) else catalog.register(
                model, model, format=None if fmt == "auto" else fmt, backend=backend).id
        return catalog.register(model_id or adapter, adapter=adapter, base=base_id)
    assert model is not None
    return catalog.register(model_id or model, model, format=None if fmt == "auto" else fmt, backend=backend)


def model_info(engine: Engine, model_id: str) -> ServeModel:
    spec = engine.catalog.resolve(model_id)
    lm = engine.loaded.get(spec.id)
    loaded = lm is not None or spec.id in engine.adapters
    return ServeModel(id=spec.id, base=spec.base_id, path=spec.adapter_path or spec.path, format=spec.format,
                      backend=spec.backend, loaded=loaded, memory_bytes=lm.model.memory_bytes if lm else None)


def model_list(engine: Engine) -> ServeModelList:
    return ServeModelList(models=[model_info(engine, s.id) for s in engine.catalog.all()],
                          memory_bytes=engine.memory_bytes(), memory_budget_bytes=engine.config.memory_budget_bytes)


def usable_backends() -> list[str]:
    out = []
    for name in BACKENDS:
        try:
            backend_class(name)
        except HaloError:
            continue
        out.append(name)
    return out
