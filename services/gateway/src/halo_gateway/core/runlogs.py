"""The tail of a run's own log, ``HALO_HOME/runs/<id>/logs/train.log`` (written by the trainers through
:mod:`halo_training.runlog`), for ``GET /api/v1/runs/{id}/logs``.

Reads backwards from the end in blocks, so a large log costs only its last lines. The path is built from a
validated id and resolved; a ``logs`` or ``train.log`` that is a link leading outside the run directory is
refused like a missing one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from halo_common.errors import NotFound
from halo_common.paths import HaloPaths

LOG_RELPATH = Path("logs") / "train.log"
MAX_LINES = 5000
BLOCK = 64 * 1024


@dataclass(frozen=True)
class LogTail:
    path: Path
    lines: list[str]
    size_bytes: int


def tail_lines(path: Path, n: int, *, block: int = BLOCK) -> tuple[list[str], int]:
    """The last ``n`` lines of ``path`` (without line ends; invalid UTF-8 replaced) and the file's size."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        end, buf = size, b""
        while end > 0 and buf.count(b"\n") <= n:
            start = max(0, end - block)
            f.seek(start)
            buf = f.read(end - start) + buf
            end = start
    lines = buf.decode("utf-8", errors="replace").splitlines()
    if end > 0:  # the first line is (possibly) cut: never return it partially
        lines = lines[1:]
    return lines[-n:] if n > 0 else [], size


def run_log_tail(paths: HaloPaths, run_id: str, lines: int) -> LogTail:
    """The last ``lines`` lines of ``run_id``'s ``train.log``: a 400 for a bad id, a 404 when the run directory
    or its log does not exist."""
    run_dir = paths.run_dir(run_id)  # validates the id (400 naming run_id)
    if not run_dir.is_dir():
        raise NotFound(f"run {run_id!r} has no run directory under {paths.runs_dir}", param="run_id")
    path = run_dir / LOG_RELPATH
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise NotFound(f"run {run_id!r} has no log yet ({LOG_RELPATH})", param="run_id") from None
    if not real.is_relative_to(run_dir.resolve()) or not real.is_file():
        raise NotFound(f"run {run_id!r} has no log ({LOG_RELPATH} is not a file in the run directory)",
                       param="run_id")
    text, size = tail_lines(real, max(1, min(lines, MAX_LINES)))
    return LogTail(path=path, lines=text, size_bytes=size)
