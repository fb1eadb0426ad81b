"""The registry process: opens (and migrates) the run database, serves the registry RPCs and
ingests run events from the durable JetStream consumer.

    python -m halo_registry                       # HALO_NATS_URL, HALO_HOME, HALO_DATABASE_URL…

Testable in-process: ``svc = Registry(settings, InMemoryBus()); await svc.start()``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from halo_common.errors import Unavailable
from halo_runtime import Service
from prometheus_client import CollectorRegistry
from sqlalchemy import exc as sa_exc

from halo_registry import __version__, handlers
from halo_registry.core.store import CostConfig, RegistryStore
from halo_registry.ingest import IngestWorker
from halo_registry.metrics import IngestMetrics, RunsGauge
from halo_registry.settings import RegistrySettings

log = logging.getLogger("halo_registry")


class Registry(Service):
    name = "registry"
    version = __version__
    description = "Run database: ingest, search, compare, cost, bundles, replay"
    settings_cls = RegistrySettings

    store: RegistryStore
    ingest: IngestWorker

    async def setup(self) -> None:
        s: RegistrySettings = self.settings  # type: ignore[assignment]
        costs = CostConfig(price_per_kwh=s.price_per_kwh, currency=s.currency, nominal_watts=s.nominal_watts)
        self.store = await self._open_store(s, costs)
        metrics_registry = self.telemetry.registry if self.telemetry else CollectorRegistry()
        metrics_registry.register(RunsGauge(self.store))
        for verb, handler, request_type in handlers.endpoints(self.store):
            await self.endpoint(verb, handler, request_type)
        self.ingest = await IngestWorker(self.store, self.bus, s, IngestMetrics(metrics_registry)).start()
        await self.track(self.ingest)
        log.info("registry database: %s", self.store.db.engine.url.render_as_string(hide_password=True))

    async def _open_store(self, s: RegistrySettings, costs: CostConfig) -> RegistryStore:
        """Open and migrate the database, waiting (with backoff) up to ``db_connect_timeout_s`` for
        one that is not reachable yet (PostgreSQL starting next to us)."""
        deadline = time.monotonic() + s.db_connect_timeout_s
        delay = 0.25
        while True:
            try:
                return await asyncio.to_thread(RegistryStore.open, s.database_url, s.home, costs=costs,
                                               version=__version__)
            except sa_exc.OperationalError as exc:
                if time.monotonic() + delay > deadline:
                    raise Unavailable(f"database unreachable: {exc.orig}", param="HALO_DATABASE_URL") from None
                log.warning("database not reachable yet (%s); retrying in %.1fs", exc.orig, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)

    def checks(self) -> dict[str, str]:
        try:
            self.store.db.ping()
        except Exception as exc:
            return {"database": str(exc)}
        return {"database": "ok"}

    async def stop(self) -> None:
        await super().stop()
        if hasattr(self, "store"):
            self.store.close()
