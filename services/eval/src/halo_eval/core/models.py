"""Which weights an evaluation loads: a hub id, a local directory, a PEFT adapter directory, or a run.

    ref = resolve_model("run:run-abc", paths)          # base + the run's adapter (not merged)
    ref = resolve_model("/ckpts/checkpoint-40", paths) # adapter dir -> its base + peft; full dir -> itself
    ref = resolve_model("Qwen/Qwen2.5-0.5B", paths)    # hub id (offline: must be in the local HF cache)

A model that cannot be found is a NotFound naming ``model`` before anything is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from halo_common.errors import BadRequest, NotFound
from halo_common.paths import HaloPaths


@dataclass(frozen=True)
class ModelRef:
    """``pretrained`` (hub id or directory) plus an optional PEFT ``peft`` directory; ``run_id`` when the
    model is a run's output (results are recorded on that run)."""

    requested: str
    pretrained: str
    peft: str | None = None
    run_id: str | None = None
    kind: str = "local"  # local | hub | run

    def to_json(self) -> dict[str, Any]:
        return {"requested": self.requested, "pretrained": self.pretrained, "peft": self.peft, "run_id": self.run_id,
                "kind": self.kind}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _looks_local(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()


def _hub(model: str, requested: str) -> ModelRef:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise NotFound(f"model {requested!r} does not exist: not a directory, not a run, and not in the local "
                           "Hugging Face cache (HF_HUB_OFFLINE=1)", param="model")
    elif model.count("/") > 1:
        raise NotFound(f"model {requested!r} does not exist (no such directory, and not a hub id)", param="model")
    return ModelRef(requested, model, kind="hub")


def _directory(path: Path, requested: str, run_id: str | None = None) -> ModelRef:
    if (path / "adapter_config.json").is_file():
        base = _read_json(path / "adapter_config.json").get("base_model_name_or_path")
        if not base:
            raise BadRequest(f"{path}: the adapter does not name its base model (base_model_name_or_path)",
                             param="model")
        base_ref = resolve_model(str(base), None)
        return ModelRef(requested, base_ref.pretrained, peft=str(path.resolve()), run_id=run_id,
                        kind="run" if run_id else "local")
    if (path / "config.json").is_file():
        return ModelRef(requested, str(path.resolve()), run_id=run_id, kind="run" if run_id else "local")
    raise NotFound(f"model {requested!r}: {path} holds neither config.json nor adapter_config.json", param="model")


def resolve_model(model: str, paths: HaloPaths | None, adapter: str | None = None) -> ModelRef:
    """The weights ``model`` names (see the module docstring); ``adapter`` adds a PEFT directory."""
    model = model.strip()
    if not model:
        raise BadRequest("model is empty", param="model")
    if model.startswith("tiny://"):  # the tiny-model kit (tests, the demo): built once, then a local directory
        from halo_training.models import resolve_model_path

        return resolve_model(resolve_model_path(model), paths, adapter)
    if model.startswith("run:"):
        run_id = model[4:]
        if paths is None:
            raise NotFound(f"{model}: no HALO_HOME configured", param="model")
        try:
            d = paths.run_dir(run_id)
        except ValueError as exc:
            raise BadRequest(f"{model}: {exc}", param="model") from None
        if not d.is_dir():
            raise NotFound(f"model {model!r} does not exist (no run directory {d})", param="model")
        for sub in ("adapter", "final"):
            if (d / sub / "adapter_config.json").is_file() or (d / sub / "config.json").is_file():
                ref = _directory(d / sub, model, run_id)
                break
        else:
            raise NotFound(f"{model} has no adapter/ or final/ model yet", param="model")
    elif _looks_local(model):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise NotFound(f"model {model!r} does not exist (no such directory)", param="model")
        ref = _directory(path, model)
    else:
        ref = _hub(model, model)
    if adapter:
        a = Path(adapter).expanduser()
        if not (a / "adapter_config.json").is_file():
            raise NotFound(f"adapter {adapter!r} does not exist (no adapter_config.json there)", param="adapter")
        ref = ModelRef(ref.requested, ref.pretrained, peft=str(a.resolve()), run_id=ref.run_id, kind=ref.kind)
    return ref
