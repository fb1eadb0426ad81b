"""Settings of the serve service (environment prefix ``HALO_SERVE_``)."""

from __future__ import annotations

from typing import Literal

from halo_common.settings import HaloSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class ServeSettings(HaloSettings):
    """Environment: ``HALO_SERVE_PORT``, ``HALO_SERVE_MODELS``, ``HALO_SERVE_MAX_BATCH_SIZE``…;
    shared ``HALO_HOME`` / ``HALO_NATS_URL`` keep their names."""

    model_config = SettingsConfigDict(env_prefix="HALO_SERVE_", extra="ignore", validate_default=True)

    host: str = Field(default="127.0.0.1", description="Bind address of the OpenAI-compatible HTTP API.")
    port: int = Field(default=8421, ge=0, le=65535, description="HTTP port (0 = pick a free one).")
    public_url: str | None = Field(default=None, description="URL the gateway should use (default http://host:port).")
    models: list[str] = Field(
        default_factory=list,
        description="Models registered at start: 'ID=PATH' or 'PATH' (PATH: directory, .gguf, Hub id, run:<id>). "
        "JSON list in the environment, e.g. HALO_SERVE_MODELS='[\"tiny=/models/tiny\"]'.")
    adapters: list[str] = Field(
        default_factory=list,
        description="Adapters registered at start: 'NAME=PATH' or 'NAME=run:<id>' (over the first model unless "
        "the adapter records its base).")
    preload: bool = Field(default=True, description="Load the configured models at start (else: on first use).")
    backend: Literal["auto", "transformers", "llamacpp", "mlx"] = Field(
        default="auto", description="Force a backend for every model (auto: from the format and the host).")
    device: str | None = Field(default=None, description="Torch device for the transformers backend (default: best).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights dtype for transformers (auto: bf16/fp16 on GPUs, fp32 on CPU).")
    max_batch_size: int = Field(default=16, ge=1, le=1024, description="Sequences decoded together per model.")
    stream_interval_ms: float = Field(
        default=5.0, ge=0, le=1000,
        description="Shortest gap between two streamed chunks of one reply (ms; 0 = a chunk per decode step). The "
                    "first token always leaves at once; tokens made within the gap leave together in one chunk.")
    max_queue: int = Field(default=256, ge=1, description="Sequences waiting for a slot before requests get 429.")
    memory_budget_gb: float = Field(default=0.0, ge=0,
                                    description="Evict least-recently-used models above this (GB; 0 = unlimited).")
    max_loaded_models: int = Field(default=4, ge=1, le=64, description="Most base models loaded at once (LRU).")
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After seconds sent with 429/503.")
    job_ack_wait_s: float = Field(default=60.0, ge=5, description="Seconds a convert/merge job stays leased "
                                  "without a heartbeat before it is redelivered to another instance.")
    job_max_deliver: int = Field(default=3, ge=1, description="Deliveries of a convert/merge job before it is dropped.")
