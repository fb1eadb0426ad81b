"""Where a spec's ``model`` lives on disk, the same for every trainer: ``tiny://llama`` / ``tiny://qwen2``
(``?size=small``) build the tiny-model kit once; a local path is made absolute (NotFound when missing);
a Hub id is passed through for the framework's own loader."""

from __future__ import annotations

import os
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
    from halo_models.tiny import make_tiny_cached

    url = urlparse(model)
    arch = url.netloc or url.path.strip("/")
    if arch not in ("llama", "qwen2"):
        raise BadRequest(f"unknown tiny model {model!r}: use tiny://llama or tiny://qwen2", param="model")
    size = (parse_qs(url.query).get("size") or ["tiny"])[0]
    if size not in ("tiny", "small"):
        raise BadRequest(f"unknown tiny size {size!r}: use tiny or small", param="model")
    return str(make_tiny_cached(arch=arch, size=size))  # type: ignore[arg-type]
