"""Settings from the environment (``HALO_`` prefix) via pydantic-settings.

Every service subclasses :class:`HaloSettings` with its own prefix (``HALO_TRAINER_TORCH_``…)
and loads it with :func:`load_settings`, which turns a validation failure into a
:class:`ConfigError` whose message names the environment variable, so a service stops at start
with one clear line instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from halo_common.paths import HaloPaths, default_home


class ConfigError(Exception):
    """An invalid setting. ``str(err)`` names every offending variable."""


class HaloSettings(BaseSettings):
    """Settings shared by every process. Environment: ``HALO_HOME``, ``HALO_NATS_URL``…"""

    # Shared fields keep their HALO_ names (validation_alias) even in a subclass whose env_prefix
    # is a service's own, e.g. HALO_REGISTRY_; service-specific fields use the subclass prefix.
    model_config = SettingsConfigDict(
        env_prefix="HALO_", extra="ignore", validate_default=True, populate_by_name=True, env_ignore_empty=True
    )

    home: Path = Field(default_factory=default_home, validation_alias="HALO_HOME",
                       description="Root of runs, database, NATS store (HALO_HOME).")
    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        validation_alias="HALO_NATS_URL",
        description="NATS server URL(s), comma separated.",
        pattern=r"^(nats|tls|ws|wss)://[^\s]+$",
    )
    # Credentials for NATS (``halo-forge up``, compose and helm generate them). Not in the URL:
    # a URL gets printed; these never are. halo_bus.NatsBus.connect reads the same variables.
    nats_user: str | None = Field(default=None, validation_alias="HALO_NATS_USER", min_length=1,
                                  description="NATS user (with HALO_NATS_PASSWORD).")
    nats_password: SecretStr | None = Field(default=None, validation_alias="HALO_NATS_PASSWORD",
                                            description="NATS password (with HALO_NATS_USER).")
    database_url: str | None = Field(
        default=None, validation_alias="HALO_DATABASE_URL",
        description="SQLAlchemy URL; default is SQLite at HALO_HOME/forge.db.",
    )
    log_level: str = Field(default="INFO", validation_alias="HALO_LOG_LEVEL",
                           pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$", description="Log level.")
    log_json: bool = Field(default=True, validation_alias="HALO_LOG_JSON", description="Emit structured JSON logs.")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Port for /metrics (0 = pick a free one).")
    metrics_host: str = Field(default="127.0.0.1", description="Bind address for /metrics.")
    drain_timeout_s: float = Field(default=10.0, gt=0, description="Seconds to finish in-flight work on SIGTERM.")
    # One shared name on purpose: the gateway refuses such specs and every worker refuses them again
    # (defence in depth), so the operator turns the policy on for the whole host in one place.
    allow_remote_code: bool = Field(
        default=False, validation_alias="HALO_ALLOW_REMOTE_CODE",
        description="Let job specs run code shipped with a model or named by module (trust_remote_code, "
        "module:function judges). Off by default; never applies to models inside imported bundles.",
    )

    @field_validator("nats_password")
    @classmethod
    def _nats_credentials_pair(cls, password: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if "nats_user" in info.data and (info.data["nats_user"] is None) != (password is None):
            raise ValueError("HALO_NATS_USER and HALO_NATS_PASSWORD must be set together")
        return password

    def nats_auth(self) -> dict[str, str]:
        """``{"user", "password"}`` for :meth:`halo_bus.NatsBus.connect` (empty without credentials)."""
        if self.nats_user is None or self.nats_password is None:
            return {}
        return {"user": self.nats_user, "password": self.nats_password.get_secret_value()}

    @property
    def paths(self) -> HaloPaths:
        return HaloPaths(self.home)


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: object) -> S:
    """Build settings ``cls`` from the environment, raising :class:`ConfigError` naming the variable."""
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "") or ""
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "?"
            var = field.upper() if field.upper().startswith("HALO_") else f"{prefix}{field}".upper()
            # A secret's value must never reach a log or a terminal, even when it is invalid.
            secret = any(w in var.lower() for w in ("token", "secret", "password"))
            got = "<redacted>" if secret else repr(err.get("input"))
            problems.append(f"{var}: {err['msg']} (got {got})")
        raise ConfigError("invalid setting: " + "; ".join(problems)) from None
