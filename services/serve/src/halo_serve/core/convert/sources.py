"""Resolve what a convert/merge names into local folders.

* a directory with ``config.json``: an HF model;
* a directory with ``adapter_config.json``: a PEFT adapter (its base from ``base_model_name_or_path``);
* ``run:<run_id>``: ``HALO_HOME/runs/<id>/adapter`` (an adapter) or ``.../final`` (a full model);
* anything else: a Hub id, fetched with ``huggingface_hub.snapshot_download`` (honours HF_HUB_OFFLINE).

``resolve_model(src, workdir)`` returns an HF directory, merging an adapter into its base first
(written under ``workdir``), plus the parents to record (``run:<id>`` and paths).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from halo_common.errors import BadRequest, NotFound
from halo_common.paths import HaloPaths


@dataclass
class Resolved:
    """A local HF model directory and where it came from."""

    path: Path
    parents: list[str] = field(default_factory=list)
    run_id: str | None = None


def run_output(run_id: str) -> Path:
    """The model a run produced: its ``adapter/`` or its ``final/`` folder."""
    try:
        rd = HaloPaths.from_env().run_dir(run_id)
    except ValueError as e:
        raise BadRequest(str(e), param="source") from None
    for sub in ("adapter", "final"):
        d = rd / sub
        if (d / "adapter_config.json").is_file() or (d / "config.json").is_file():
            return d
    raise NotFound(f"run {run_id!r} has no adapter/ or final/ model under {rd}", param="source")


def local_dir(src: str, param: str = "source") -> tuple[Path, list[str], str | None]:
    """(directory, parents, run id) for a path, ``run:<id>`` or Hub id, without merging anything."""
    if src.startswith("run:"):
        run_id = src[4:]
        return run_output(run_id), [src], run_id
    p = Path(src).expanduser()
    if p.exists():
        if not p.is_dir():
            raise BadRequest(f"{src} is a file; expected a model or adapter directory", param=param)
        return p.resolve(), [str(p.resolve())], None
    if src.startswith((".", "/", "~")) or src.count("/") != 1:
        raise NotFound(f"{src} does not exist (not a directory, run:<id> or Hub id)", param=param)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(src)), [src], None
    except Exception as e:  # offline, unknown repo, auth: one clear line
        raise NotFound(f"cannot fetch {src!r} from the Hub: {type(e).__name__}: {e}", param=param) from None


def is_adapter(d: Path) -> bool:
    return (Path(d) / "adapter_config.json").is_file()


def adapter_base(adapter_dir: Path) -> str:
    """``base_model_name_or_path`` of a PEFT adapter."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise BadRequest(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path; pass --base", param="base")
    return str(base)


def resolve_model(src: str, workdir: Path, dtype: str = "fp32") -> Resolved:
    """An HF directory for ``src``; an adapter (or a run's adapter) is merged into its base under ``workdir``."""
    d, parents, run_id = local_dir(src)
    if is_adapter(d):
        from halo_serve.core.convert.merge import bake_to

        base_src = adapter_base(d)
        base_dir, base_parents, _ = local_dir(base_src, param="base")
        merged = Path(workdir) / "merged"
        bake_to(base_dir, d, merged, dtype=dtype)
        return Resolved(merged, parents + base_parents, run_id)
    if not (d / "config.json").is_file():
        raise BadRequest(f"{d} has neither config.json (a model) nor adapter_config.json (an adapter)", param="source")
    return Resolved(d, parents, run_id)
