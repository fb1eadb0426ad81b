"""Where a spec's ``model`` lives on disk, the same for every trainer: ``tiny://llama`` / ``tiny://qwen2``
(``?size=small``) build the tiny-model kit once; a local path is made absolute (NotFound when missing);
a Hub id is passed through for the framework's own loader. The kit is optional (it needs torch to build the
weights): without it a ``tiny://`` model is a clear error."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from halo_common.errors import BadRequest, NotFound
from halo_common.specpolicy import is_local_path


def resolve_model_path(model: str) -> str:
    """Local directory for ``tiny://`` models; a Hub id unchanged; a local path made absolute, and
    :class:`NotFound` (``model not found: PATH``) when nothing is there, rather than a Hub repo-id error."""
    if not model.startswith("tiny://"):
        if not is_local_path(model):
            return model
        path = os.path.abspath(os.path.expanduser(model))
        if not os.path.exists(path):
            raise NotFound(f"model not found: {path}", param="model")
        return path
    try:
        from halo_models.tiny import make_tiny_cached
    except ImportError:  # the kit builds its weights with torch; torch-free images (trainer-mlx slim) lack it
        raise BadRequest(f"{model}: the tiny-model kit (halo-models, needs torch) is not installed here",
                         param="model") from None

    url = urlparse(model)
    arch = url.netloc or url.path.strip("/")
    if arch not in ("llama", "qwen2"):
        raise BadRequest(f"unknown tiny model {model!r}: use tiny://llama or tiny://qwen2", param="model")
    size = (parse_qs(url.query).get("size") or ["tiny"])[0]
    if size not in ("tiny", "small"):
        raise BadRequest(f"unknown tiny size {size!r}: use tiny or small", param="model")
    return str(make_tiny_cached(arch=arch, size=size))  # type: ignore[arg-type]


def write_verifier_manifest(out_dir: Path, *, base_model: str, fmt: str, stats: dict[str, float]) -> Path:
    """``verifier.json`` next to a reward model: tells the verifier loader how to score with it."""
    manifest = {
        "kind": "reward-model",
        "format": fmt,  # "hf-seq-cls" | "peft-seq-cls"
        "base_model": base_model,
        "score": "logit of the single-label sequence-classification head on the chat-formatted prompt+completion",
        "normalization": stats,
    }
    path = out_dir / "verifier.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path
