"""The live telemetry strip: one sampler shared by every open stream.

A :class:`TelemetryHub` samples this host with :func:`halo_telemetry.sample_all` (CPU/RAM always; NVIDIA, AMD and
MLX devices when their libraries are present; an unreadable value is ``null``, never 0) every ``interval_s``
while at least one client listens, and stops when the last one leaves — an idle dashboard costs nothing.
Each frame also lists the running jobs with their step and, from the runs' live ``progressed`` events, their
tokens per second (absent until a trainer reports it).

Usage::

    hub = TelemetryHub(interval_s=1.0, jobs=running_jobs, bus=bus)
    async for frame in hub.frames():          # an SSE route: one frame per tick, until the client leaves
        yield f"data: {json.dumps(frame)}\\n\\n"
    await hub.snapshot()                       # one frame now (no stream)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from halo_bus import Bus, subjects
from halo_bus.api import EventRecord
from halo_telemetry import AcceleratorSample, sample_all

#: Progress metrics copied into a running job's entry (what the strip shows per job).
JOB_RATE_KEYS = ("tokens_per_second", "samples_per_second", "loss", "reward")


class TelemetryHub:
    """Shared sampler + fan-out. ``jobs`` returns the running jobs as dicts (``job_id``, ``run_id``, ``step``,
    ``total_steps``…); ``bus`` (optional) feeds the per-run rates from live progress events."""

    def __init__(self, interval_s: float = 1.0, *, sampler: Callable[[], list[AcceleratorSample]] = sample_all,
                 jobs: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None, bus: Bus | None = None) -> None:
        self.interval_s, self.sampler, self.jobs, self.bus = interval_s, sampler, jobs, bus
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self._task: asyncio.Task[None] | None = None
        self._sub: Any = None
        self._rates: dict[str, dict[str, float]] = {}
        self._lock = asyncio.Lock()  # streams opening together must start one sampler and one subscription
        self.ticks = 0

    @property
    def listeners(self) -> int:
        return len(self._queues)

    async def snapshot(self) -> dict[str, Any]:
        """One frame, sampled now."""
        devices = await asyncio.to_thread(self.sampler)
        jobs: list[dict[str, Any]] = []
        if self.jobs is not None:
            with contextlib.suppress(Exception):  # no job state reachable: the strip shows devices only
                jobs = await self.jobs()
        for job in jobs:
            job.update(self._rates.get(job.get("run_id", ""), {}))
        return {"ts": time.time(), "devices": [d.to_dict() for d in devices], "jobs": jobs}

    async def frames(self) -> AsyncIterator[dict[str, Any]]:
        """Frames as they are sampled, until the caller stops iterating (a slow reader gets the newest only)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1)
        self._queues.add(queue)
        await self._ensure_running()
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)
            if not self._queues:
                async with self._lock:
                    if not self._queues:  # nobody joined while this one waited for the lock
                        await self._stop()

    async def _ensure_running(self) -> None:
        async with self._lock:
            await self._start()

    async def _start(self) -> None:
        if self._task is None or self._task.done():
            if self.bus is not None and self._sub is None:
                with contextlib.suppress(Exception):
                    self._sub = await self.bus.subscribe_events(subjects.runs_events_filter("*"), self._on_event,
                                                                deliver_all=False)
            self._task = asyncio.create_task(self._loop())

    async def _stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.stop()
        self._rates.clear()

    async def _loop(self) -> None:
        while self._queues:
            started = time.monotonic()
            frame = await self.snapshot()
            self.ticks += 1
            for queue in list(self._queues):
                if queue.full():  # keep only the newest frame for a reader that fell behind
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                queue.put_nowait(frame)
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def _on_event(self, record: EventRecord[Any]) -> None:
        msg = record.message
        run_id = getattr(msg, "run_id", None)
        if run_id is None:
            return
        kind = record.subject.rsplit(".", 1)[-1]
        if kind == "finished":
            self._rates.pop(run_id, None)
        elif kind == "progressed":
            metrics = getattr(msg, "metrics", {}) or {}
            rates = {k: float(metrics[k]) for k in JOB_RATE_KEYS if k in metrics}
            if rates:
                self._rates.setdefault(run_id, {}).update(rates)
