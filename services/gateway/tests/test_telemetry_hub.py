"""TelemetryHub: streams opening together share one sampler loop and one event subscription (they used to
race, each starting its own while the subscription was awaited), and the last one to leave stops both."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from halo_bus import Bus
from halo_gateway.core.telemetry import TelemetryHub


def _loops() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "TelemetryHub._loop"]


async def test_concurrent_streams_share_one_sampler_and_stop_it_together(bus: Bus) -> None:
    samples = 0

    def sampler() -> list:
        nonlocal samples
        samples += 1
        return []

    hub = TelemetryHub(0.01, sampler=sampler, bus=bus)
    seen: list[list[float]] = [[] for _ in range(5)]
    loops_while_open: list[int] = []

    async def reader(i: int) -> None:
        async with aclosing(hub.frames()) as frames:  # as the SSE response closes it when the client leaves
            async for frame in frames:
                seen[i].append(frame["ts"])
                loops_while_open.append(len(_loops()))
                if len(seen[i]) >= 3:
                    return

    await asyncio.gather(*(reader(i) for i in range(5)))
    assert all(len(s) == 3 for s in seen)
    assert set(loops_while_open) == {1}, loops_while_open  # never more than one sampler loop
    assert hub.ticks == samples  # every sample came from that loop
    assert hub.listeners == 0 and hub._task is None and hub._sub is None and _loops() == []
