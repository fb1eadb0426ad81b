"""Halo Forge common pieces: settings, errors, ids, HALO_HOME paths and backend detection."""

from halo_common.errors import (
    BadRequest,
    Conflict,
    HaloError,
    Internal,
    NotFound,
    Unavailable,
    Unprocessable,
)
from halo_common.ids import id_prefix, new_id
from halo_common.paths import HaloPaths
from halo_common.settings import ConfigError, HaloSettings, load_settings

__all__ = [
    "BadRequest",
    "ConfigError",
    "Conflict",
    "HaloError",
    "HaloPaths",
    "HaloSettings",
    "Internal",
    "NotFound",
    "Unavailable",
    "Unprocessable",
    "id_prefix",
    "load_settings",
    "new_id",
]

__version__ = "0.1.0"
