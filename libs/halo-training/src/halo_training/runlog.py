"""The job's own log in its run directory: ``runs/<id>/logs/train.log`` (the gateway's
``GET /api/v1/runs/{id}/logs`` tails it for the run page).

:func:`run_log` attaches a :class:`logging.FileHandler` to the root logger (INFO and up: our loggers and the
warnings of transformers / TRL / MLX) for the duration of a job and removes it afterwards. The file is opened
in append mode, so a resumed run's log continues where the last attempt stopped. :func:`logged_job` wraps a
trainer's ``run_job(method, spec, run_dir, ...)`` in it, with a start and an end line per attempt.

With several jobs in one process (``max_concurrent_jobs > 1``) each file takes only its job thread's records;
with one job it takes every thread's (data loaders, reward workers...). In a multi-process torch run only
rank 0 writes (the launcher's output of the other ranks is in ``logs/`` already).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

LOG_NAME = "train.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
METRICS_LOGGER = "halo_training.metrics"  # RunDir.append_metrics logs each metrics row here at INFO
#: Library loggers that do not propagate to the root (transformers sets ``propagate = False`` outside CI).
LIBRARY_LOGGERS = ("transformers",)

log = logging.getLogger(__name__)
_lock = threading.Lock()
_active: dict[int, int] = {}  # thread id -> open run logs on that thread
F = TypeVar("F", bound=Callable[..., Any])


class _JobFilter(logging.Filter):
    """Records of the job's thread; every thread's while this is the process's only job."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread or len(_active) <= 1


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def run_log(run_dir: Path | str, *, level: int = logging.INFO) -> Iterator[Path]:
    """Append the process's log records (``level`` and up) to ``<run_dir>/logs/train.log`` while inside.

    Yields the log's path. Non-zero ranks of a multi-process run yield it without writing.
    """
    path = Path(run_dir) / "logs" / LOG_NAME
    if not _is_main_rank():
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=False)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FORMAT))
    me = threading.get_ident()
    handler.addFilter(_JobFilter(me))
    targets = [logging.getLogger()] + [lg for name in LIBRARY_LOGGERS
                                       if not (lg := logging.getLogger(name)).propagate]
    # The per-step metrics lines (halo_training.rundir) reach the file whatever the root level is; the
    # logger is set back afterwards, so a process's own log settings decide outside a job.
    metrics_logger = logging.getLogger(METRICS_LOGGER)
    metrics_level = metrics_logger.level
    with _lock:
        _active[me] = _active.get(me, 0) + 1
        metrics_logger.setLevel(min(level, logging.INFO))
    for lg in targets:
        lg.addHandler(handler)
    try:
        yield path
    finally:
        for lg in targets:
            lg.removeHandler(handler)
        with _lock:
            if sum(_active.values()) <= 1:  # the last job of the process: give the level back
                metrics_logger.setLevel(metrics_level)
        with _lock:
            if _active.get(me, 0) <= 1:
                _active.pop(me, None)
            else:
                _active[me] -= 1
        handler.close()


def _note(path: Path, message: str) -> None:
    """One line straight into the file, whatever the loggers' levels (the attempt's start and end)."""
    record = logging.LogRecord("halo_training.runlog", logging.INFO, __file__, 0, message, None, None)
    with contextlib.suppress(OSError), path.open("a", encoding="utf-8") as f:
        f.write(logging.Formatter(FORMAT).format(record) + "\n")


def logged_job(fn: F) -> F:
    """Decorate a trainer's ``run_job(method, spec, run_dir, *, attempt=..., ...)``: the call runs inside
    :func:`run_log` of its run directory, between an "attempt N started" and an "ended" line."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        run_dir, method = Path(bound.arguments["run_dir"]), bound.arguments.get("method")
        attempt = bound.arguments.get("attempt", 1)
        run_id = bound.arguments.get("run_id") or run_dir.name
        with run_log(run_dir) as path:
            main = _is_main_rank()
            if main:
                _note(path, f"run {run_id}: {method} attempt {attempt} started (pid {os.getpid()})")
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                if main:
                    _note(path, f"run {run_id}: attempt {attempt} stopped: {type(exc).__name__}: {exc}")
                raise
            if main:
                state = getattr(result, "state", None)
                error = getattr(result, "failure_reason", None)
                _note(path, f"run {run_id}: attempt {attempt} ended {getattr(state, 'value', state)}"
                            + (f": {error}" if error else ""))
            return result

    return wrapper  # type: ignore[return-value]
