"""Live telemetry for the dashboard's strip.

* ``GET /api/v1/telemetry``         -> one frame now: ``{"ts", "devices": [...], "jobs": [...]}``
* ``GET /api/v1/telemetry/stream``  -> ``text/event-stream``, one ``data:`` frame every
  ``HALO_GATEWAY_TELEMETRY_INTERVAL_S`` (default 1 s) until the client leaves

A device is ``{kind: cpu|nvidia|amd|mlx, device, name, utilization_ratio, memory_used_bytes,
memory_total_bytes, power_watts, temperature_c}``; a value the sampler cannot read is ``null``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from halo_bus import Bus
from halo_clients import JobsClient
from halo_schemas.jobs import JobState
from pydantic import BaseModel, Field

from halo_gateway.app import get_bus
from halo_gateway.core.telemetry import TelemetryHub
from halo_gateway.routes.jobs import EventStream

router = APIRouter(prefix="/api/v1/telemetry", tags=["telemetry"])


class TelemetryFrame(BaseModel):
    ts: float = Field(description="Unix time of the sample.")
    devices: list[dict[str, Any]] = Field(description="CPU/RAM, then each accelerator; unreadable values null.")
    jobs: list[dict[str, Any]] = Field(description="Running jobs: ids, step, total_steps, live rates when reported.")


def _hub(request: Request, bus: Bus) -> TelemetryHub:
    hub = getattr(request.app.state, "telemetry_hub", None)
    if hub is None:
        async def running() -> list[dict[str, Any]]:
            jobs = await JobsClient(bus, timeout=2.0).list(state=JobState.RUNNING, limit=50)
            return [j.model_dump(mode="json", include={"job_id", "run_id", "job_type", "service", "step",
                                                        "total_steps"}) for j in jobs]

        hub = request.app.state.telemetry_hub = TelemetryHub(request.app.state.settings.telemetry_interval_s,
                                                             jobs=running, bus=bus)
    return hub


@router.get("", response_model=TelemetryFrame)
async def telemetry(request: Request, bus: Bus = Depends(get_bus)) -> dict[str, Any]:
    return await _hub(request, bus).snapshot()


@router.get("/stream", response_class=EventStream)
async def telemetry_stream(request: Request, bus: Bus = Depends(get_bus)) -> StreamingResponse:
    """Frames as server-sent events; the sampler runs only while someone listens."""
    hub = _hub(request, bus)

    async def frames() -> AsyncIterator[str]:
        async for frame in hub.frames():
            yield f"data: {json.dumps(frame)}\n\n"

    return EventStream(frames(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
