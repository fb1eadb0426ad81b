"""Health, metrics and service discovery."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response
from halo_bus import Bus, subjects
from halo_common.errors import NotFound
from halo_schemas.health import HealthRequest, ServiceHealth, ServiceInfo
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from halo_gateway import __version__
from halo_gateway.app import get_bus

router = APIRouter()


class GatewayHealth(BaseModel):
    status: str = Field(description="ok when the gateway is up and connected to NATS, else degraded.")
    version: str = Field(description="Gateway version.")
    nats: str = Field(description="connected | disconnected.")


class ServiceEntry(BaseModel):
    name: str = Field(description="Service name.")
    id: str = Field(description="Instance id.")
    version: str = Field(description="Instance version.")
    endpoints: list[str] = Field(description="RPC subjects served.")
    metadata: dict[str, str] = Field(description="Instance metadata (backend, metrics URL).")
    health: ServiceHealth | None = Field(description="Health answer, null when it did not answer.")


class ServicesResponse(BaseModel):
    services: list[ServiceEntry] = Field(description="Every running instance found via NATS micro discovery.")


@router.get("/health", response_model=GatewayHealth, tags=["core"])
async def health(bus: Bus = Depends(get_bus)) -> GatewayHealth:
    ok = bus.connected
    return GatewayHealth(status="ok" if ok else "degraded", version=__version__, nats="connected" if ok else "disconnected")


@router.get("/metrics", tags=["core"], response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """The gateway's Prometheus metrics (text exposition format)."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


async def _health_of(bus: Bus, info: ServiceInfo, timeout: float) -> ServiceHealth | None:
    subject = subjects.rpc(info.name, "health") if info.name in subjects.SERVICES else None
    if subject is None or subject not in info.endpoints:
        return None
    try:
        return await bus.request(subject, HealthRequest(), ServiceHealth, timeout=timeout)
    except Exception:
        return None


@router.get("/api/v1/services", response_model=ServicesResponse, tags=["core"])
async def services(bus: Bus = Depends(get_bus)) -> ServicesResponse:
    """Running instances (NATS micro ``$SRV.INFO``) with each service's health answer."""
    found = await bus.discover(timeout=0.3)
    healths = await asyncio.gather(*(_health_of(bus, s, 2.0) for s in found))
    return ServicesResponse(services=[
        ServiceEntry(name=s.name, id=s.id, version=s.version, endpoints=s.endpoints, metadata=s.metadata, health=h)
        for s, h in zip(found, healths, strict=True)
    ])


@router.get("/api/v1/services/{name}/health", response_model=ServiceHealth, tags=["core"])
async def service_health(name: str, request: Request, bus: Bus = Depends(get_bus)) -> ServiceHealth:
    """Health of one service (one instance answers, through its queue group)."""
    if name not in subjects.SERVICES:
        raise NotFound(f"unknown service {name!r}; known: {', '.join(subjects.SERVICES)}", param="name")
    timeout = request.app.state.settings.rpc_timeout_s
    return await bus.request(subjects.rpc(name, "health"), HealthRequest(), ServiceHealth, timeout=timeout)
