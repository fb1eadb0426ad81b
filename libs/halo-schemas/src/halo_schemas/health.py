"""Service health, as returned by every service's ``halo.rpc.<svc>.health`` endpoint."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from halo_schemas.base import Message, utcnow


class HealthStatus(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"
    STARTING = "starting"  # answering health, still registering its endpoints and consumers: not ready for work


class ServiceHealth(Message):
    schema_id = "halo.rpc.service-health.v1"

    service: str = Field(description="Service name, e.g. 'trainer-torch'.")
    instance_id: str = Field(description="Unique id of this process (NATS micro service id).")
    version: str = Field(description="Service package version.")
    status: HealthStatus = Field(description="ok | degraded | down.")
    uptime_s: float = Field(ge=0, description="Seconds since start.")
    backend: str | None = Field(default=None, description="Accelerator backend this instance uses.")
    metrics_url: str | None = Field(default=None, description="Prometheus /metrics URL of this instance.")
    checks: dict[str, str] = Field(default_factory=dict, description="Named sub-checks -> 'ok' or a problem.")
    details: dict[str, Any] = Field(default_factory=dict, description="Service-specific extra information.")
    ts: datetime = Field(default_factory=utcnow, description="UTC time of the check.")


class HealthRequest(Message):
    schema_id = "halo.rpc.health-request.v1"


class ServiceInfo(Message):
    """One running instance as seen through NATS micro discovery."""

    schema_id = "halo.rpc.service-info.v1"

    name: str = Field(description="Service name.")
    id: str = Field(description="Instance id.")
    version: str = Field(description="Version.")
    description: str | None = Field(default=None, description="Description.")
    endpoints: list[str] = Field(default_factory=list, description="RPC subjects the instance serves.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Micro metadata (metrics URL, backend).")
