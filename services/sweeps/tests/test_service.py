"""sweeps on the in-memory bus and a real nats-server (the ``bus`` fixture runs both)."""

from __future__ import annotations

from halo_bus import Bus
from halo_clients.sweeps import SweepsClient
from halo_sweeps.service import Sweeps
from halo_sweeps.settings import SweepsSettings


async def test_the_service_starts_and_reports_healthy(bus: Bus) -> None:
    svc = Sweeps(SweepsSettings(), bus)
    await svc.start()
    try:
        health = await SweepsClient(bus).health()
        assert health.service == "sweeps" and health.status == "ok"
    finally:
        await svc.stop()
