"""Job envelopes: the spec base every job type extends, job state, and job control RPCs.

Long jobs are acknowledged on acceptance and then live in the ``HALO_JOB_STATE`` KV bucket
(one :class:`JobStatus` per job id) and in run events.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from halo_schemas.base import Message, UserInput, utcnow


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobSpecBase(UserInput):
    """Common fields of every job spec. Concrete job types subclass it with their own fields."""

    name: str | None = Field(default=None, description="Optional human-readable name for the run.", max_length=200)
    tags: list[str] = Field(default_factory=list, description="Free-form tags stored with the run.")
    seed: int = Field(default=42, ge=0, description="Random seed for everything the job samples.")


class JobEnvelope(Message):
    """What goes on a ``halo.job.*`` work queue: ids plus the validated spec as JSON."""

    schema_id = "halo.job.envelope.v1"

    job_id: str = Field(description="Job id (job-…); also the JetStream Nats-Msg-Id for dedup.")
    run_id: str = Field(description="Run id (run-…) the job writes to.")
    job_type: str = Field(description="Job type token, e.g. 'sft', 'dpo', 'verify-batch'.")
    spec_schema: str = Field(description="schema_id of the spec model.")
    spec: dict[str, Any] = Field(description="The spec, validated against spec_schema before enqueue.")
    submitted_at: datetime = Field(default_factory=utcnow, description="UTC submission time.")
    resume: bool = Field(default=False, description="True when this delivery continues an interrupted job.")


class JobStatus(Message):
    """Current state of one job (value in the job-state KV bucket)."""

    schema_id = "halo.job.status.v1"

    job_id: str = Field(description="Job id.")
    run_id: str = Field(description="Run id.")
    job_type: str = Field(description="Job type token.")
    service: str = Field(description="Service that owns the job, e.g. 'trainer-torch'.")
    state: JobState = Field(description="queued | running | succeeded | failed | cancelled.")
    attempt: int = Field(default=0, ge=0, description="How many times a worker has started this job.")
    worker: str | None = Field(default=None, description="Instance id of the worker running it.")
    step: int | None = Field(default=None, description="Last reported step.")
    total_steps: int | None = Field(default=None, description="Planned steps, when known.")
    error: str | None = Field(default=None, description="Failure reason when state is failed.")
    cancel_requested: bool = Field(default=False, description="A cancel was requested; the worker stops at the next step.")
    heartbeat_at: datetime | None = Field(default=None, description="Last worker heartbeat (UTC).")
    created_at: datetime = Field(default_factory=utcnow, description="UTC creation time.")
    updated_at: datetime = Field(default_factory=utcnow, description="UTC time of this status.")


class JobSubmitted(Message):
    """Reply to a job submission: the ids to follow."""

    schema_id = "halo.rpc.job-submitted.v1"

    job_id: str = Field(description="Job id.")
    run_id: str = Field(description="Run id.")
    state: JobState = Field(default=JobState.QUEUED, description="State after submission.")


class JobRef(Message):
    """Names one job (cancel / show requests)."""

    schema_id = "halo.rpc.job-ref.v1"

    job_id: str = Field(description="Job id.")
