"""Settings of the trainer-mlx service (environment prefix ``HALO_TRAINER_MLX_``)."""

from __future__ import annotations

from halo_training.jobs import TrainerSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class TrainerMlxSettings(TrainerSettings):
    """Environment: ``HALO_TRAINER_MLX_ACK_WAIT_S`` etc.; shared ``HALO_HOME`` / ``HALO_NATS_URL`` keep their names."""

    model_config = SettingsConfigDict(env_prefix="HALO_TRAINER_MLX_", extra="ignore", validate_default=True)

    job_types: str = Field(default="sft,dpo,orpo,rm,grpo", description="Comma-separated job types this instance consumes.")
