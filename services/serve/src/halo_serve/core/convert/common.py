"""Shared pieces of convert/merge: host support matrix, llama.cpp converter location, hashing,
output paths and the ``halo_artifact.json`` manifest.

``supported_matrix()`` answers "which (format, quant) pairs can this host produce and verify"::

    >>> supported_matrix()["gguf"]
    {'fp32': None, 'fp16': None, 'bf16': None, 'q8': None, 'q4': None}     # None = available
    >>> supported_matrix()["mlx"]["q4"]
    'mlx is not installed (pip install "mlx[cpu]" mlx-lm)'                  # reason it is not
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from halo_common.errors import BadRequest, Conflict, Unavailable
from halo_common.paths import HaloPaths
from halo_schemas.convert import SUPPORTED_QUANTS, ArtifactManifest

MANIFEST_FILE = "halo_artifact.json"

#: llama-cpp-python version whose sdist ``scripts/dev setup`` caches (keep equal to LLAMA_CPP_VERSION there).
LLAMA_CPP_VERSION = os.environ.get("HALO_LLAMA_CPP_VERSION", "0.3.36")


def cache_dir() -> Path:
    """``$HALO_CACHE_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/halo-forge`` (same rule as scripts/dev)."""
    env = os.environ.get("HALO_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "halo-forge"


def llama_cpp_dir() -> Path | None:
    """Folder holding llama.cpp's ``convert_hf_to_gguf.py`` + ``conversion/`` + ``gguf-py/``.

    ``$HALO_LLAMA_CPP_DIR`` if set, else the copy ``scripts/dev setup`` extracted from the
    llama-cpp-python sdist into the cache; None when neither exists."""
    env = os.environ.get("HALO_LLAMA_CPP_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(cache_dir() / "llama-cpp-python" / LLAMA_CPP_VERSION / "llama.cpp")
    for c in candidates:
        if (c / "convert_hf_to_gguf.py").is_file() and (c / "gguf-py").is_dir():
            return c
    return None


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def format_unavailable(fmt: str) -> str | None:
    """Why ``fmt`` cannot be exported + verified on this host, or None when it can."""
    if fmt == "hf":
        return None if _has("transformers") else "transformers is not installed"
    if fmt == "gguf":
        if not _has("llama_cpp"):
            return "llama-cpp-python is not installed (scripts/dev setup builds it)"
        if llama_cpp_dir() is None:
            return "llama.cpp's converter is not cached (run scripts/dev setup, or set HALO_LLAMA_CPP_DIR)"
        return None
    if fmt == "mlx":
        return None if _has("mlx") and _has("mlx_lm") else 'mlx is not installed (pip install "mlx[cpu]" mlx-lm)'
    return f"unknown format {fmt!r}"


def supported_matrix() -> dict[str, dict[str, str | None]]:
    """format -> quant -> None (available) or the reason it is not, for every implemented pair."""
    return {fmt: {q: format_unavailable(fmt) for q in quants} for fmt, quants in SUPPORTED_QUANTS.items()}


def check_pair(fmt: str, quant: str) -> None:
    """Refuse an unsupported (format, quant) pair up front, naming the valid choices."""
    if fmt not in SUPPORTED_QUANTS:
        raise BadRequest(f"unknown format {fmt!r}; choose one of {', '.join(SUPPORTED_QUANTS)}", param="format")
    if quant not in SUPPORTED_QUANTS[fmt]:
        raise BadRequest(
            f"quant {quant!r} is not available for format {fmt!r}; choose one of {', '.join(SUPPORTED_QUANTS[fmt])}",
            param="quant",
        )
    why = format_unavailable(fmt)
    if why:
        raise Unavailable(f"format {fmt!r} is not available on this host: {why}", param="format")


def tree_sha256(path: Path) -> tuple[str, int]:
    """(sha256, total bytes) of a file, or of a directory as sorted ``relpath sha256`` lines
    (the manifest file itself excluded, so writing it does not change the hash)."""
    path = Path(path)
    if path.is_file():
        return _file_sha(path), path.stat().st_size
    lines, total = [], 0
    for p in sorted(q for q in path.rglob("*") if q.is_file() and q.name != MANIFEST_FILE):
        lines.append(f"{p.relative_to(path).as_posix()} {_file_sha(p)}\n")
        total += p.stat().st_size
    return hashlib.sha256("".join(lines).encode()).hexdigest(), total


def _file_sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_path(out: Path) -> Path:
    """Where the manifest of ``out`` lives: inside a directory, ``<file>.halo_artifact.json`` beside a file."""
    out = Path(out)
    return out / MANIFEST_FILE if out.is_dir() else out.with_name(out.name + "." + MANIFEST_FILE)


def write_manifest(manifest: ArtifactManifest) -> Path:
    p = manifest_path(Path(manifest.path))
    p.write_text(manifest.model_dump_json(indent=2) + "\n")
    return p


def read_manifest(out: str | Path) -> ArtifactManifest | None:
    p = manifest_path(Path(out))
    return ArtifactManifest.model_validate_json(p.read_text()) if p.is_file() else None


def default_out(name: str, suffix: str = "") -> Path:
    """``HALO_HOME/models/<name><suffix>``."""
    return HaloPaths.from_env().models_dir / f"{name}{suffix}"


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to clobber an existing output unless ``overwrite``; create the parent."""
    if out.exists():
        if not overwrite:
            raise Conflict(f"{out} already exists; pass --overwrite to replace it", param="out")
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
        mp = out.with_name(out.name + "." + MANIFEST_FILE)
        if mp.exists():
            mp.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
