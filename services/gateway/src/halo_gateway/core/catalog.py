"""What the dashboard's Train page needs to build its form: each training method's spec JSON Schema, and the
model catalog with per-backend support and recommended settings.

Usage::

    method_schema("sft")                        # the JSON Schema of SFTSpec (404 naming the known methods)
    catalog_view(backend="cuda", memory_gb=24)  # catalog entries + a recommendation each, where one fits
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from halo_common.errors import BadRequest, NotFound
from halo_models.catalog import BACKENDS, CatalogError, load_catalog, recommend
from halo_schemas.methods import TRAINING_JOB_SPECS
from pydantic import BaseModel, Field

#: Local test models every backend can train (built on the fly by ``halo_models.tiny``).
TINY_MODELS = ("tiny://llama", "tiny://qwen2")


@cache
def method_schema(method: str) -> dict[str, Any]:
    """The JSON Schema of ``method``'s spec (``TRAINING_JOB_SPECS``), as pydantic writes it."""
    cls = TRAINING_JOB_SPECS.get(method)
    if cls is None:
        raise NotFound(f"unknown training method {method!r}; known: {', '.join(TRAINING_JOB_SPECS)}", param="method")
    return cls.model_json_schema()


class CatalogModel(BaseModel):
    id: str = Field(description="Hugging Face Hub id.")
    family: str = Field(description="Model family.")
    params_b: float = Field(description="Parameters, in billions.")
    context_length: int = Field(description="Maximum context, in tokens.")
    license: str = Field(description="License identifier.")
    gated: bool = Field(description="Needs accepting terms on the Hub.")
    weights_format: str = Field(description="hf | mlx.")
    supported: bool | None = Field(description="Finetunable on the asked backend; null when no backend was asked.")
    note: str | None = Field(description="The backend's caveat, when a backend was asked.")
    recommended: dict[str, Any] | None = Field(
        description="Spec keys recommended for this backend and memory (finetune, lora, learning_rate, max_length, "
                    "batch_size…), or null when not asked, unsupported, or it does not fit.")
    estimated_memory_gb: float | None = Field(description="Estimated peak memory of the recommendation, in GiB.")


class CatalogView(BaseModel):
    backend: Literal["cuda", "rocm", "mps", "mlx", "cpu"] | None = Field(description="Backend asked about.")
    memory_gb: float | None = Field(description="Memory budget asked about, in GiB.")
    tiny_models: list[str] = Field(description="Local test models (no download).")
    models: list[CatalogModel] = Field(description="Catalog models, in catalog order.")


def catalog_view(backend: str | None = None, memory_gb: float | None = None) -> CatalogView:
    """Catalog entries, and for ``backend`` (+ ``memory_gb``) whether each is supported and what to start with."""
    if backend is not None and backend not in BACKENDS:
        raise BadRequest(f"backend: unknown {backend!r}; known: {', '.join(BACKENDS)}", param="backend")
    if memory_gb is not None and memory_gb <= 0:
        raise BadRequest("memory_gb: must be > 0", param="memory_gb")
    models = []
    for m in load_catalog().models:
        note = m.backends.get(backend) if backend else None  # type: ignore[arg-type]
        rec = None
        if backend and note and note.supported and memory_gb:
            try:
                rec = recommend(m.id, backend, memory_gb)  # type: ignore[arg-type]
            except CatalogError:
                rec = None  # does not fit in this memory: shown as "no recommendation", not an error
        models.append(CatalogModel(
            id=m.id, family=m.family, params_b=m.params_b, context_length=m.context_length, license=m.license,
            gated=m.gated, weights_format=m.weights_format, supported=note.supported if note else None,
            note=note.note if note else None, recommended=rec.spec() if rec else None,
            estimated_memory_gb=rec.estimated_memory_gb if rec else None))
    return CatalogView(backend=backend, memory_gb=memory_gb, tiny_models=list(TINY_MODELS), models=models)  # type: ignore[arg-type]
