"""Settings of the data service (environment prefix ``HALO_DATA_``)."""

from __future__ import annotations

from halo_common.settings import HaloSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class DataSettings(HaloSettings):
    """Environment: ``HALO_DATA_JOB_ACK_WAIT_S``, ``HALO_DATA_MAX_CONCURRENT_JOBS``…; shared ``HALO_HOME`` /
    ``HALO_NATS_URL`` keep their names."""

    model_config = SettingsConfigDict(env_prefix="HALO_DATA_", extra="ignore", validate_default=True)

    job_ack_wait_s: float = Field(default=60.0, gt=0, le=3600,
                                  description="Job lease: a data job whose worker stops heartbeating is redelivered.")
    job_max_deliver: int = Field(default=5, ge=1, description="Deliveries (first run + resumes) before a job is dropped.")
    max_concurrent_jobs: int = Field(default=2, ge=1, le=64, description="Data jobs one instance runs at once.")
    progress_interval_s: float = Field(default=1.0, ge=0, description="Minimum seconds between progress events.")
    verify_timeout_s: float = Field(default=600.0, gt=0, description="Bound on one verifier-sandbox batch request.")
    teacher_timeout_s: float = Field(default=600.0, gt=0, description="Bound on one rollout-teacher request.")
