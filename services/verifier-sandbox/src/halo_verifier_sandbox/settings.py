"""verifier-sandbox settings. Environment: ``HALO_VERIFIER_SANDBOX_<FIELD>``; shared settings
(``HALO_HOME``, ``HALO_NATS_URL``…) keep their ``HALO_`` names."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from halo_common.settings import HaloSettings
from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict


class VerifierSandboxSettings(HaloSettings):
    model_config = SettingsConfigDict(env_prefix="HALO_VERIFIER_SANDBOX_", extra="ignore", validate_default=True,
                                      populate_by_name=True)

    workers: int = Field(default=0, ge=0, le=256, description="Verifications run in parallel (0 = CPU count).")
    mechanism: Literal["auto", "bwrap", "unshare", "sandbox-exec", "container", "host"] = Field(
        default="auto", description="Sandbox mechanism; auto probes bwrap, unshare, sandbox-exec (fails closed).")
    allow_host: bool = Field(default=False, description="Allow running untrusted code on the host when no sandbox "
                             "mechanism works (UNSAFE: trusted code only).")
    base_dir: Path | None = Field(default=None, description="Where workspaces are created (default: the system temp dir).")
    uid_base: int = Field(default=2_900_000, ge=1000, description="First private uid for sandboxes (when root).")
    uid_count: int = Field(default=64, ge=1, le=65536, description="Size of the private uid pool (>= workers).")
    cache_entries: int = Field(default=50_000, ge=0, description="Result-cache size in memory (0 disables the cache).")
    cache_persist: bool = Field(default=False, description="Keep the result cache in HALO_HOME/cache (SQLite).")
    plugins: bool = Field(default=True, description="Load HALO_HOME/verifiers/*.py and halo_forge.verifiers entry points.")
    max_reply_bytes: int = Field(default=900_000, ge=10_000, description="Largest bus reply; batch details are "
                                 "trimmed to fit (NATS max_payload is 1 MiB by default).")

    @field_validator("uid_count")
    @classmethod
    def _pool_fits(cls, count: int, info: ValidationInfo) -> int:
        workers = info.data.get("workers") or 0
        if workers and count < workers:
            raise ValueError(f"must be >= workers ({workers})")
        return count
