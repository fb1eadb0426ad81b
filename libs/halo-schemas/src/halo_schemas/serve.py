"""Wire models of the serve service: control RPCs (load / unload / list / info) and model events.

The OpenAI HTTP shapes are not here: serve speaks them on its own port (see docs/serve.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from halo_schemas.base import Message

ServeFormat = Literal["auto", "hf", "gguf", "mlx"]


class ServeLoadRequest(Message):
    """Register a model id and load it now (``halo-forge serve load``)."""

    schema_id = "halo.rpc.serve-load-request.v1"
    id: str | None = Field(default=None, description="Model id clients will use; default: the model/adapter string.")
    model: str | None = Field(default=None, description="Base model: local directory, .gguf file, Hub id or "
                              "'run:<run_id>' (a run's adapter or final model).")
    adapter: str | None = Field(default=None, description="LoRA adapter directory or 'run:<run_id>', served as "
                                "its own id over its base (``model`` or the adapter's recorded base).")
    format: ServeFormat = Field(default="auto", description="Weights format; auto detects it from the files.")
    backend: str | None = Field(default=None, description="Force a backend (transformers, llamacpp, mlx).")
    load: bool = Field(default=True, description="Load the weights now (false: only register; loads on first use).")


class ServeUnloadRequest(Message):
    """Unload a model (a base unloads with its adapters) and optionally forget its id."""

    schema_id = "halo.rpc.serve-unload-request.v1"
    id: str = Field(description="Model id to unload.")
    forget: bool = Field(default=False, description="Also remove the id from the catalog.")


class ServeListRequest(Message):
    schema_id = "halo.rpc.serve-list-request.v1"


class ServeInfoRequest(Message):
    schema_id = "halo.rpc.serve-info-request.v1"


class ServeModel(Message):
    """One servable model id."""

    schema_id = "halo.rpc.serve-model.v1"
    id: str = Field(description="Model id (what requests put in 'model').")
    base: str | None = Field(default=None, description="Base model id of an adapter; None for a base model.")
    path: str | None = Field(default=None, description="Weights path (or adapter path) on the serve host.")
    format: str = Field(description="Weights format: hf, gguf or mlx.")
    backend: str = Field(description="Backend that serves it.")
    loaded: bool = Field(description="Whether its weights are in memory now.")
    memory_bytes: int | None = Field(default=None, description="Memory its weights take when loaded.")


class ServeModelList(Message):
    schema_id = "halo.rpc.serve-model-list.v1"
    models: list[ServeModel] = Field(default_factory=list, description="Every registered model id.")
    memory_bytes: int = Field(default=0, description="Memory all loaded models take.")
    memory_budget_bytes: int = Field(default=0, description="LRU eviction threshold (0: unlimited).")


class ServeInfo(Message):
    """Where serve's OpenAI-compatible HTTP API is (the gateway proxies /v1 there)."""

    schema_id = "halo.rpc.serve-info.v1"
    url: str = Field(description="Base URL of the HTTP server, e.g. http://127.0.0.1:8421 (append /v1).")
    version: str = Field(description="Serve version.")
    backends: list[str] = Field(default_factory=list, description="Backends usable on this host.")


class ServeModelEvent(Message):
    """A model was loaded or unloaded (``halo.evt.serve.model.<id>.loaded|unloaded``)."""

    schema_id = "halo.evt.serve-model.v1"
    id: str = Field(description="Model id.")
    action: Literal["loaded", "unloaded", "adapter-loaded"] = Field(description="What happened.")
    backend: str | None = Field(default=None, description="Backend of the model.")
    format: str | None = Field(default=None, description="Weights format.")
    base: str | None = Field(default=None, description="Base id of an adapter.")
    reason: str | None = Field(default=None, description="Why it was unloaded: requested, evicted, shutdown.")
    memory_bytes: int | None = Field(default=None, description="Memory the weights take.")
    load_seconds: float | None = Field(default=None, description="Time the load took.")
