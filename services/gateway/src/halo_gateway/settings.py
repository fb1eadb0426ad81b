import re
from pathlib import Path
from typing import Annotated

from halo_common.settings import HaloSettings
from halo_common.tokens import check_token_value
from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict


class GatewaySettings(HaloSettings):
    """Environment: ``HALO_GATEWAY_HOST``, ``HALO_GATEWAY_PORT``, ``HALO_GATEWAY_TOKEN``; shared
    settings (``HALO_NATS_URL``, ``HALO_HOME``…) keep their ``HALO_`` names."""

    model_config = SettingsConfigDict(env_prefix="HALO_GATEWAY_", extra="ignore", validate_default=True)

    host: str = Field(default="127.0.0.1", description="Bind address. Keep 127.0.0.1 unless a token is set.")
    port: int = Field(default=8420, ge=0, le=65535, description="HTTP port (0 = pick a free one).")
    token: str | None = Field(default=None, description="Operator-given bearer token (>= 16 printable characters); "
                              "when set (or tokens exist in HALO_HOME/auth/tokens.json) every route but /health "
                              "needs a token. A non-loopback host always needs one: the first start creates it.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Extra Host header names accepted (comma separated), besides loopback "
                                          "names, the bind address and, when exposed, this machine's names and IPs.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Browser origins allowed to call the API (comma separated); none: no CORS.")
    rpc_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of bus requests made for a route.")
    session_ttl_s: float = Field(default=12 * 3600, gt=0, description="Lifetime of a dashboard sign-in (the "
                                 "browser session cookie), in seconds from sign-in.")
    telemetry_interval_s: float = Field(default=1.0, ge=0.1, le=60, description="Period of the live telemetry "
                                        "stream (GET /api/v1/telemetry/stream), in seconds.")
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="When exposed (non-loopback host): directories, besides HALO_HOME, that "
        "job specs may read data and models from (colon or comma separated); any other local path is refused.")

    @field_validator("data_roots", mode="before")
    @classmethod
    def _path_list(cls, v: object) -> object:
        # Colon-separated like PATH, or comma-separated like the other list settings.
        return [Path(p.strip()).expanduser() for p in re.split(r"[:,]", v) if p.strip()] if isinstance(v, str) else v

    @field_validator("token")
    @classmethod
    def _token_usable(cls, v: str | None) -> str | None:
        return None if v is None else check_token_value(v)

    @field_validator("allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, v: object) -> object:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v
