"""Where a training run's progress goes, and how it is told to stop; the same for every trainer.

* :class:`Reporter` — receives a run's events (started, progress, checkpointed, artifact). The service's
  :class:`halo_training.jobs.BusReporter` publishes them on the bus; :class:`FileReporter` appends them to a
  JSON-lines file (rank 0 of a multi-process run) and :func:`replay_file_events` forwards that file.
* :class:`JobControl` — thread-safe stop flags (cancel / preempt / supervisor gone) a training loop polls
  after every optimizer step.
* :func:`artifact_identity` — content hash and size of an output, as ``RunArtifactAdded`` carries them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

#: Artifacts larger than this get no content hash (hashing tens of GB would hold the job up for minutes).
HASH_LIMIT_BYTES = 1 << 30


def artifact_identity(path: Path) -> tuple[str | None, int]:
    """(sha256 over the files' names and contents, total size); no hash above HASH_LIMIT_BYTES."""
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    size = sum(f.stat().st_size for f in files)
    if size > HASH_LIMIT_BYTES:
        return None, size
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest(), size


class Reporter:
    """Receives a run's events. Base class: every method is a no-op (use it directly to discard events)."""

    def started(self, *, total_steps: int | None, resumed_from_step: int | None, info: dict[str, Any]) -> None:
        """Training is about to start (or resume)."""

    def progress(self, step: int, total_steps: int | None, metrics: dict[str, float]) -> None:
        """Metrics at ``step`` (already rate-limited)."""

    def checkpointed(self, step: int, path: str) -> None:
        """A complete checkpoint is in place."""

    def artifact(self, kind: str, fmt: str, path: str, step: int | None = None) -> None:
        """An output (adapter, model, samples) was written."""


class FileReporter(Reporter):
    """Appends events as JSON lines to a file (rank 0 of a multi-process run)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _write(self, event_type: str, **data: Any) -> None:
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"type": event_type, **data}, default=float) + "\n")
            f.flush()

    def started(self, *, total_steps: int | None, resumed_from_step: int | None, info: dict[str, Any]) -> None:
        self._write("started", total_steps=total_steps, resumed_from_step=resumed_from_step, info=info)

    def progress(self, step: int, total_steps: int | None, metrics: dict[str, float]) -> None:
        self._write("progress", step=step, total_steps=total_steps, metrics=metrics)

    def checkpointed(self, step: int, path: str) -> None:
        self._write("checkpointed", step=step, path=path)

    def artifact(self, kind: str, fmt: str, path: str, step: int | None = None) -> None:
        self._write("artifact", kind=kind, fmt=fmt, path=path, step=step)


def replay_file_events(path: Path, offset: int, reporter: Reporter) -> int:
    """Forward complete lines of a :class:`FileReporter` file from byte ``offset``; returns the new offset."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        kind = ev.pop("type", None)
        if kind == "progress":
            reporter.progress(ev["step"], ev.get("total_steps"), ev.get("metrics") or {})
        elif kind == "checkpointed":
            reporter.checkpointed(ev["step"], ev["path"])
        elif kind == "artifact":
            reporter.artifact(ev["kind"], ev["fmt"], ev["path"], ev.get("step"))
        elif kind == "started":
            reporter.started(total_steps=ev.get("total_steps"), resumed_from_step=ev.get("resumed_from_step"),
                             info=ev.get("info") or {})
    return offset + end


class JobControl:
    """Stop requests for a running job. Thread-safe; the callback polls :meth:`stop_reason` every step.

    ``cancel()`` stops for good; ``preempt()`` (service shutting down) stops after writing a checkpoint so
    the job resumes elsewhere. ``cancel_file`` and ``supervisor_pid`` let a multi-process run be stopped
    by the service that launched it, and stop by itself when that service dies.
    """

    def __init__(self, cancel_file: Path | None = None, supervisor_pid: int | None = None) -> None:
        self._cancel = threading.Event()
        self._preempt = threading.Event()
        self.cancel_file = cancel_file
        self.supervisor_pid = supervisor_pid
        self._last_pid_check = 0.0

    def cancel(self) -> None:
        self._cancel.set()

    def preempt(self) -> None:
        self._preempt.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def stop_reason(self) -> str | None:
        if self._cancel.is_set():
            return "cancelled"
        if self.cancel_file is not None and self.cancel_file.exists():
            kind = self.cancel_file.read_text().strip() or "cancelled"
            if kind == "preempted":
                self._preempt.set()
            else:
                self._cancel.set()
            return kind
        if self._preempt.is_set():
            return "preempted"
        if self.supervisor_pid is not None and time.monotonic() - self._last_pid_check > 1.0:
            self._last_pid_check = time.monotonic()
            try:
                os.kill(self.supervisor_pid, 0)
            except ProcessLookupError:
                return "supervisor-gone"
            except PermissionError:
                pass
        return None



def power_watts() -> float | None:
    """Total accelerator power draw, or None when no sampler can read it (never 0 for unknown)."""
    try:
        from halo_telemetry import sample_all

        readings = [s.power_watts for s in sample_all() if s.power_watts is not None]
    except Exception:  # pragma: no cover
        return None
    return float(sum(readings)) if readings else None


