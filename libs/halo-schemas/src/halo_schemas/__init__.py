"""Halo Forge wire models. Pure pydantic, no I/O."""

from halo_schemas.base import (
    Message,
    UnknownSchema,
    UserInput,
    describe_validation_error,
    model_for,
    registered_schemas,
    utcnow,
)
from halo_schemas.events import RunArtifactAdded, RunCheckpointed, RunEvent, RunFinished, RunProgressed, RunStarted
from halo_schemas.health import HealthRequest, HealthStatus, ServiceHealth, ServiceInfo
from halo_schemas.jobs import JobEnvelope, JobRef, JobSpecBase, JobState, JobStatus, JobSubmitted

__all__ = [
    "HealthRequest",
    "HealthStatus",
    "JobEnvelope",
    "JobRef",
    "JobSpecBase",
    "JobState",
    "JobStatus",
    "JobSubmitted",
    "Message",
    "RunArtifactAdded",
    "RunCheckpointed",
    "RunEvent",
    "RunFinished",
    "RunProgressed",
    "RunStarted",
    "ServiceHealth",
    "ServiceInfo",
    "UnknownSchema",
    "UserInput",
    "describe_validation_error",
    "model_for",
    "registered_schemas",
    "utcnow",
]
