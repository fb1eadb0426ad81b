"""Run events from the bus into the database: a durable consumer, batched writes.

The worker takes up to ``ingest_batch`` events at a time from ``Bus.consume_events_batched``
(durable ``registry-ingest``), applies them in one transaction, and the bus acks them all; the next
batch is fetched and decoded while one commits. A registry that was down resumes from the durable
consumer's position; an event delivered again (a crash between commit and ack, a replay) is
harmless because ingest is idempotent. If a batch fails, its events are retried one by one; one
event that keeps failing is redelivered alone, then given up after ``ingest_max_deliver``
deliveries (logged and counted), so it never blocks the stream. An undecodable event is dropped
by the bus and counted here.

A database that is away (PostgreSQL restarting, SQLite locked) is waited for: the batch in hand is
retried with backoff while the bus keeps its lease, and nothing is given up. Stopping while
waiting hands the batch back for redelivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from halo_bus import Bus, EventRecord, Subscription, subjects
from halo_schemas.events import RunEvent
from sqlalchemy import exc as sa_exc

from halo_registry.core.ingest import IngestStats
from halo_registry.core.store import RegistryStore
from halo_registry.metrics import IngestMetrics
from halo_registry.settings import RegistrySettings

log = logging.getLogger("halo_registry.ingest")

#: Database errors that say "not now" rather than "never": retried, never counted against an event.
TRANSIENT = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)

class IngestWorker(Subscription):
    """Start with :meth:`start` (returns itself, a Subscription the service tracks); :meth:`stop`
    finishes the batch in hand, so nothing applied is left unacknowledged on a clean stop."""

    def __init__(self, store: RegistryStore, bus: Bus, settings: RegistrySettings, metrics: IngestMetrics) -> None:
        self.store, self.bus, self.settings, self.metrics = store, bus, settings, metrics
        self.durable = subjects.REGISTRY_INGEST_DURABLE
        self.totals = IngestStats()
        self._stopping = asyncio.Event()
        self._sub: Subscription | None = None

    async def start(self) -> IngestWorker:
        s = self.settings
        self._sub = await self.bus.consume_events_batched(
            subjects.RUN_EVENTS_WILDCARD, self.durable, self._on_batch, message_type=RunEvent,
            batch_size=s.ingest_batch, max_wait_s=s.ingest_wait_s, ack_wait_s=s.ingest_ack_wait_s,
            drain_timeout_s=s.drain_timeout_s, on_undecodable=self._on_undecodable,
        )
        return self

    async def stop(self) -> None:
        self._stopping.set()  # a batch waiting for the database gives up and is handed back
        if self._sub is not None:
            await self._sub.stop()  # the durable consumer itself stays, keeping our position

    def _on_undecodable(self, _subject: str, _error: Exception) -> None:
        self.metrics.failures.inc()  # the bus logged and dropped it

    async def _apply(self, events: Sequence[RunEvent]) -> IngestStats:
        started = time.perf_counter()
        stats = await asyncio.to_thread(self.store.apply_events, events)
        self.metrics.observe(stats, events, time.perf_counter() - started)
        self.totals.add(stats)
        return stats

    async def _on_batch(self, records: list[EventRecord[RunEvent]]) -> list[EventRecord[RunEvent]]:
        """Apply a batch in one transaction; returns the records to redeliver (acked: the rest)."""
        events = [r.message for r in records]
        delay = 0.2
        while True:
            try:
                await self._apply(events)
                return []
            except TRANSIENT as exc:
                # The database is away (or locked): keep the batch (the bus extends its lease) and
                # retry; giving events up, or letting them count deliveries, would lose data.
                if self._stopping.is_set():
                    raise  # the bus hands the batch back for redelivery
                log.warning("database unavailable (%s); retrying %d events in %.1fs", exc.orig, len(records), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception:
                log.exception("applying a batch of %d events failed; retrying them one by one", len(records))
                return await self._one_by_one(records)

    async def _one_by_one(self, records: list[EventRecord[RunEvent]]) -> list[EventRecord[RunEvent]]:
        retry: list[EventRecord[RunEvent]] = []
        for r in records:
            try:
                await self._apply([r.message])
            except TRANSIENT:
                retry.append(r)
            except Exception as exc:
                if r.num_delivered >= self.settings.ingest_max_deliver:
                    ev = r.message
                    log.error("giving up event %s seq %s of %s after %d deliveries: %s", r.subject, ev.seq, ev.run_id,
                              r.num_delivered, exc)
                    self.metrics.failures.inc()  # acked with the batch: never delivered again
                else:
                    retry.append(r)
        return retry
