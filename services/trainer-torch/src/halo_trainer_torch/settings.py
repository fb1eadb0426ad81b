"""Settings of the trainer-torch service (environment prefix ``HALO_TRAINER_TORCH_``)."""

from __future__ import annotations

from halo_common.settings import HaloSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class TrainerTorchSettings(HaloSettings):
    """Environment: ``HALO_TRAINER_TORCH_ACK_WAIT_S`` etc.; shared ``HALO_HOME`` / ``HALO_NATS_URL`` keep their names."""

    model_config = SettingsConfigDict(env_prefix="HALO_TRAINER_TORCH_", extra="ignore", validate_default=True)

    ack_wait_s: float = Field(
        default=15.0, gt=0, le=600,
        description="Job lease: a job whose worker stops heartbeating is redelivered (resumed) after this many seconds.",
    )
    max_deliver: int = Field(default=10, ge=1, description="Deliveries (first run + resumes) before a job is dropped.")
    max_concurrent_jobs: int = Field(default=1, ge=1, le=64, description="Jobs this process trains at the same time.")
    status_interval_s: float = Field(
        default=2.0, gt=0, description="Seconds between job-state KV updates (heartbeat, step, cancel polling)."
    )
    job_types: str = Field(
        default="sft,dpo,orpo,rm,grpo,raft", description="Comma-separated job types this instance consumes."
    )
