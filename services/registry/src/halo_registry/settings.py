from halo_common.settings import HaloSettings
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from halo_registry.core.cost import DEFAULT_NOMINAL_WATTS


class RegistrySettings(HaloSettings):
    """Environment: ``HALO_REGISTRY_PRICE_PER_KWH``, ``HALO_REGISTRY_CURRENCY``,
    ``HALO_REGISTRY_NOMINAL_WATTS`` (JSON, e.g. ``{"cuda": 450}``), ``HALO_REGISTRY_INGEST_*``; the
    database is ``HALO_DATABASE_URL`` (default SQLite at ``HALO_HOME/forge.db``)."""

    model_config = SettingsConfigDict(env_prefix="HALO_REGISTRY_", extra="ignore", validate_default=True)

    price_per_kwh: float = Field(default=0.30, ge=0, description="Electricity price per kWh used for run cost.")
    currency: str = Field(default="USD", min_length=1, max_length=8, description="Currency of price_per_kwh.")
    nominal_watts: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_NOMINAL_WATTS),
        description="Nominal machine power per backend (W), used when a run logged no power_watts. Keys you "
                    "set override the defaults.",
    )
    ingest_batch: int = Field(default=500, ge=1, le=10000, description="Most events applied per transaction.")
    ingest_wait_s: float = Field(default=0.25, gt=0, description="How long an idle fetch waits for events.")
    ingest_ack_wait_s: float = Field(default=30.0, gt=0,
                                     description="Seconds before an unacknowledged event is delivered again.")
    ingest_max_deliver: int = Field(default=10, ge=1,
                                    description="Deliveries of an event that keeps failing before it is given up.")
    db_connect_timeout_s: float = Field(default=30.0, ge=0,
                                        description="How long start-up waits for an unreachable database.")

    @field_validator("nominal_watts")
    @classmethod
    def _merge_defaults(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, w in v.items() if w < 0]
        if bad:
            raise ValueError(f"nominal watts must be >= 0 (backend {', '.join(bad)})")
        return {**DEFAULT_NOMINAL_WATTS, **v}

    @field_validator("database_url")
    @classmethod
    def _database_supported(cls, url: str | None) -> str | None:
        if url and not url.startswith(("sqlite:", "postgres://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError(f"must be sqlite:///… or postgresql://…, not {url.split('://')[0]}://…")
        return url
