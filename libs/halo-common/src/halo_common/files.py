"""Files: content hashes, dataset fingerprints and crash-safe rewrites — one implementation for every service.

::

    from halo_common.files import dataset_fingerprint, sha256_file, write_json_atomic, write_jsonl_atomic

    sha, size = dataset_fingerprint(Path("data/train.jsonl"))   # a file, or a directory of files
    write_json_atomic(run_dir / "raft_state.json", state)        # readers see the old file or the new one

A directory's hash is the SHA-256 of the UTF-8 text made of one ``<relative posix path> <file sha256>\\n`` line
per file, sorted by path — the convention of :class:`halo_schemas.replay.DatasetFingerprint`, so a run's
recorded dataset hash, a bundle's tree hash and an artifact's hash compare equal for equal trees.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHUNK_BYTES = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str, chunk: int = CHUNK_BYTES) -> str:
    """SHA-256 of a file's bytes, read in chunks (constant memory)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_sha256(file_hashes: dict[str, str]) -> str:
    """Hash of a tree from its files' hashes (relative posix path -> sha256), by the convention above."""
    return sha256_bytes("".join(f"{p} {h}\n" for p, h in sorted(file_hashes.items())).encode())


def dataset_fingerprint(path: Path | str) -> tuple[str, int]:
    """(sha256, total bytes) of a file, or of a directory by the tree convention."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path), path.stat().st_size
    files = sorted(p for p in path.rglob("*") if p.is_file())
    hashes = {p.relative_to(path).as_posix(): sha256_file(p) for p in files}
    return tree_sha256(hashes), sum(p.stat().st_size for p in files)


def _replace_atomically(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` via a temp file, fsync and rename: a crash leaves the old
    file or the new one, never half of one."""

    def write(f: Any) -> None:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")

    _replace_atomically(Path(path), write)


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Rewrite ``path`` as JSON lines (one row each, keys sorted; non-JSON numbers as floats), atomically."""

    def write(f: Any) -> None:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, default=float) + "\n")

    _replace_atomically(Path(path), write)
