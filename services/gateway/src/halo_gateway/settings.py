from halo_common.settings import HaloSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class GatewaySettings(HaloSettings):
    """Environment: ``HALO_GATEWAY_HOST``, ``HALO_GATEWAY_PORT``, ``HALO_GATEWAY_TOKEN``; shared
    settings (``HALO_NATS_URL``, ``HALO_HOME``…) keep their ``HALO_`` names."""

    model_config = SettingsConfigDict(env_prefix="HALO_GATEWAY_", extra="ignore", validate_default=True)

    host: str = Field(default="127.0.0.1", description="Bind address. Keep 127.0.0.1 unless a token is set.")
    port: int = Field(default=8420, ge=0, le=65535, description="HTTP port (0 = pick a free one).")
    token: str | None = Field(default=None, min_length=16, description="Bearer token required on /api when set.")
    rpc_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of bus requests made for a route.")

