"""Settings of the eval service (environment prefix ``HALO_EVAL_``)."""

from __future__ import annotations

from halo_common.settings import HaloSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class EvalSettings(HaloSettings):
    """Environment: ``HALO_EVAL_DEVICE``, ``HALO_EVAL_SERVED_URL``…; shared ``HALO_HOME`` / ``HALO_NATS_URL`` keep
    their names."""

    model_config = SettingsConfigDict(env_prefix="HALO_EVAL_", extra="ignore", validate_default=True)

    device: str | None = Field(default=None, description="Torch device for the hf backend (default: cuda if present, "
                               "else cpu).")
    served_url: str | None = Field(default=None, description="serve's OpenAI base URL (…/v1) for backend=served; "
                                   "default: asked from serve (halo.rpc.serve.info).")
    include_paths: str = Field(default="", description="Extra lm-eval task directories (comma-separated), besides "
                               "the built-in offline suite.")
    job_ack_wait_s: float = Field(default=60.0, gt=0, le=3600, description="Job lease before redelivery.")
    job_max_deliver: int = Field(default=3, ge=1, description="Deliveries before a job is dropped.")
    passk_chunk: int = Field(default=8, ge=1, le=1024, description="Problems sampled per rollout request (pass@k).")
    verify_timeout_s: float = Field(default=600.0, gt=0, description="Longest wait for one verification batch.")
    record_wait_s: float = Field(default=15.0, ge=0, description="How long to wait for the registry to know the "
                                 "run before recording results on it.")
