"""Which model a request's ``model`` id names: registered ids, local paths and ``run:<run_id>``.

A :class:`ModelSpec` says what to load for an id: a base model (path + format + backend) or a
LoRA adapter over a base (``base_id`` + ``adapter_path``). The :class:`ModelCatalog` holds the
registered ids and resolves unknown ones::

    catalog = ModelCatalog(paths=HaloPaths(home))
    catalog.register("qwen", "/models/qwen")                      # base model, format detected
    catalog.register("qwen-sql", adapter="/runs/r1/adapter", base="qwen")
    catalog.resolve("run:run-abc")       # adapter of a training run over its base
    catalog.resolve("/models/other")     # a local path is its own id

Formats: a ``.gguf`` file (or a directory with exactly one) is ``gguf``; a directory whose
``config.json`` carries MLX quantisation (``quantization.group_size``) or a ``halo_format.json``
saying ``{"format": "mlx"}`` is ``mlx``; other directories with a ``config.json`` are ``hf``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo_common.errors import BadRequest, NotFound
from halo_common.paths import HaloPaths

from halo_serve.core.backends import choose_backend


class ModelNotFound(NotFound):
    """An unknown ``model`` id (OpenAI code ``model_not_found``)."""

    type = "invalid_request_error"


@dataclass
class ModelSpec:
    """What an id serves. Base models have ``path``; adapters have ``base_id`` + ``adapter_path``."""

    id: str
    path: str | None = None
    format: str = "hf"
    backend: str = "transformers"
    base_id: str | None = None
    adapter_path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_adapter(self) -> bool:
        return self.adapter_path is not None


def detect_format(path: str) -> str:
    """``hf``, ``gguf`` or ``mlx`` for a local path (see the module docstring)."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return "gguf"
    if p.is_dir():
        if len(list(p.glob("*.gguf"))) == 1 and not (p / "config.json").is_file():
            return "gguf"
        marker = _read_json(p / "halo_format.json")
        if marker.get("format") in ("hf", "gguf", "mlx"):
            return str(marker["format"])
        cfg = _read_json(p / "config.json")
        q = cfg.get("quantization")
        if isinstance(q, dict) and "group_size" in q:
            return "mlx"
        if cfg:
            return "hf"
        if (p / "adapter_config.json").is_file():
            raise BadRequest(f"{path} is an adapter, not a model: serve it with --adapter NAME={path}",
                             param="model")
    raise NotFound(f"no model at {path} (need a directory with config.json or a .gguf file)", param="model")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _looks_local(s: str) -> bool:
    return s.startswith((".", "/", "~")) or Path(s).expanduser().exists()


class ModelCatalog:
    """Registered model ids and resolution of ad-hoc ones (thread-safe)."""

    def __init__(self, paths: HaloPaths | None = None, forced_backend: str | None = None) -> None:
        self.paths = paths
        self.forced_backend = forced_backend
        self.specs: dict[str, ModelSpec] = {}
        self._lock = threading.Lock()

    def register(self, model_id: str, path: str | None = None, *, adapter: str | None = None,
                 base: str | None = None, format: str | None = None, backend: str | None = None,
                 options: dict[str, Any] | None = None) -> ModelSpec:
        """Add (or replace) ``model_id``: a base model at ``path``, or an ``adapter`` over ``base``
        (an id, registered or resolvable, or a path)."""
        if not model_id or any(c.isspace() for c in model_id):
            raise BadRequest(f"invalid model id {model_id!r}", param="id")
        if adapter is not None:
            if adapter.startswith("run:"):
                spec = self._run_spec(adapter[4:], model_id)
                if base is not None:
                    spec.base_id = self.resolve(base).id
                with self._lock:
                    self.specs[model_id] = spec
                return spec
            apath = Path(adapter).expanduser()
            if not (apath / "adapter_config.json").is_file():
                raise NotFound(f"no PEFT adapter (adapter_config.json) in {adapter}", param="adapter")
            base_ref = base or _read_json(apath / "adapter_config.json").get("base_model_name_or_path")
            if not base_ref:
                raise BadRequest(f"adapter {adapter} does not name its base model: pass base", param="base")
            base_spec = self.resolve(str(base_ref))
            spec = ModelSpec(model_id, format=base_spec.format, backend=base_spec.backend, base_id=base_spec.id,
                             adapter_path=str(apath.resolve()))
        else:
            if path is None:
                raise BadRequest("a model needs a path (or an adapter)", param="path")
            if path.startswith("run:"):
                spec = self._run_spec(path[4:], model_id)
            else:
                fmt = format or (detect_format(path) if _looks_local(path) else "hf")
                local = str(Path(path).expanduser().resolve()) if _looks_local(path) else path
                spec = ModelSpec(model_id, path=local, format=fmt,
                                 backend=choose_backend(fmt, backend or self.forced_backend), options=options or {})
        with self._lock:
            self.specs[model_id] = spec
        return spec

    def unregister(self, model_id: str) -> None:
        with self._lock:
            self.specs.pop(model_id, None)

    def get(self, model_id: str) -> ModelSpec | None:
        with self._lock:
            return self.specs.get(model_id)

    def resolve(self, model_id: str) -> ModelSpec:
        """The spec for a request's ``model``: registered, ``run:<id>`` or a local path (registered
        under that id on first use). Unknown ids raise :class:`ModelNotFound`."""
        spec = self.get(model_id)
        if spec is not None:
            return spec
        if model_id.startswith("run:"):
            return self.register(model_id, adapter=model_id) if self._run_has_adapter(model_id[4:]) else \
                self.register(model_id, path=model_id)
        if _looks_local(model_id):
            try:
                return self.register(model_id, model_id)
            except NotFound:
                pass
        raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")

    def all(self) -> list[ModelSpec]:
        with self._lock:
            return list(self.specs.values())

    # ---- training runs ---------------------------------------------------------------------------
    def _run_dir(self, run_id: str) -> Path:
        if self.paths is None:
            raise ModelNotFound(f"run:{run_id}: no HALO_HOME configured", param="model")
        try:
            d = self.paths.run_dir(run_id)
        except ValueError as exc:
            raise ModelNotFound(f"run:{run_id}: {exc}", param="model") from None
        if not d.is_dir():
            raise ModelNotFound(f"The model 'run:{run_id}' does not exist (no run directory {d})", param="model")
        return d

    def _run_has_adapter(self, run_id: str) -> bool:
        return (self._run_dir(run_id) / "adapter" / "adapter_config.json").is_file()

    def _run_spec(self, run_id: str, model_id: str) -> ModelSpec:
        """A run's output: its PEFT ``adapter/`` over the base it was trained from, else ``final/``
        (a full model, e.g. a merged or full finetune)."""
        d = self._run_dir(run_id)
        adapter = d / "adapter"
        if (adapter / "adapter_config.json").is_file():
            base_ref = _read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
            if not base_ref:
                spec_model = _read_json(d / "spec.json").get("model")
                base_ref = spec_model if isinstance(spec_model, str) else None
            if not base_ref:
                raise BadRequest(f"run:{run_id}: the adapter does not name its base model", param="model")
            base_spec = self.resolve(str(base_ref))
            return ModelSpec(model_id, format=base_spec.format, backend=base_spec.backend, base_id=base_spec.id,
                             adapter_path=str(adapter.resolve()))
        final = d / "final"
        if (final / "config.json").is_file():
            return ModelSpec(model_id, path=str(final.resolve()), format="hf",
                             backend=choose_backend("hf", self.forced_backend))
        raise ModelNotFound(f"run:{run_id} has no adapter/ or final/ model yet", param="model")
