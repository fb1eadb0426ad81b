"""Settings of the rollout service (environment prefix ``HALO_ROLLOUT_``)."""

from __future__ import annotations

from typing import Literal

from halo_common.settings import HaloSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class RolloutSettings(HaloSettings):
    """Environment: ``HALO_ROLLOUT_BACKEND``, ``HALO_ROLLOUT_DEFAULT_MODEL``, ``HALO_ROLLOUT_MAX_BATCH_SIZE``…;
    shared ``HALO_HOME`` / ``HALO_NATS_URL`` keep their names."""

    model_config = SettingsConfigDict(env_prefix="HALO_ROLLOUT_", extra="ignore", validate_default=True)

    backend: Literal["auto", "transformers", "vllm", "mlx"] = Field(
        default="auto",
        description="Backend for requests that say 'auto': auto picks vllm on CUDA/ROCm with vLLM installed, mlx on "
        "Apple silicon, else transformers.",
    )
    default_model: str | None = Field(
        default=None, description="Model used when a request names none (Hub id or local directory)."
    )
    max_batch_size: int = Field(
        default=64, ge=1, le=4096, description="Sequences decoded together in one batch (prompts x n)."
    )
    max_rpc_samples: int = Field(
        default=1024, ge=1, description="Most completions (sum of n over prompts) one RPC may ask for; more: use the job."
    )
    cache_size: int = Field(default=2, ge=1, le=64, description="Loaded models kept (LRU) across requests.")
    device: str | None = Field(default=None, description="Torch device for the transformers backend (default: best).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights dtype for the transformers backend (auto: bf16/fp16 on GPUs, fp32 on CPU)."
    )
    gpu_memory_utilization: float = Field(
        default=0.85, gt=0, le=1, description="Fraction of GPU memory the vLLM backend may use."
    )
    job_ack_wait_s: float = Field(
        default=60.0, gt=0, le=3600, description="Job lease: a rollout job whose worker stops heartbeating is redelivered."
    )
    job_max_deliver: int = Field(default=5, ge=1, description="Deliveries (first run + resumes) before a job is dropped.")
    progress_interval_s: float = Field(default=1.0, ge=0, description="Minimum seconds between job progress events.")
