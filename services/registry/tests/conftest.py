"""Registry tests run on SQLite and on a real PostgreSQL (a fresh file / schema per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from halo_registry.core.store import CostConfig, RegistryStore
from halo_registry.testing import RegistryDb, registry_db  # noqa: F401  (fixture)

COSTS = CostConfig(price_per_kwh=0.25, currency="EUR", nominal_watts={"cpu": 60.0, "cuda": 400.0})


@pytest.fixture
def store(registry_db: RegistryDb) -> Iterator[RegistryStore]:  # noqa: F811
    s = RegistryStore.open(registry_db.url, registry_db.home, costs=COSTS, version="test")
    yield s
    s.close()
