"""Run events from the bus into the database: a durable JetStream consumer, batched writes.

On a :class:`~halo_bus.NatsBus` the worker pulls up to ``ingest_batch`` events, applies them in one
transaction, then acks them all. A registry that was down resumes from the durable consumer's
position; an event delivered again (a crash between commit and ack, a replay) is harmless because
ingest is idempotent. One event that keeps failing is retried alone, then given up after
``ingest_max_deliver`` deliveries (logged and counted), so it never blocks the stream.

``Bus.subscribe_events`` acks one event per handler call, which would make every event its own
transaction (~10x slower); batching needs the raw pull consumer, so on NATS the worker uses the
bus's JetStream context directly. On any other bus (the in-memory one in unit tests) it falls back
to ``subscribe_events`` with the same durable name and one event per transaction.

A database that is away (PostgreSQL restarting, SQLite locked) is waited for: the batch in hand is
retried with backoff while its lease is extended, and nothing is given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from halo_bus import Bus, EventRecord, NatsBus, Subscription, codec, subjects
from halo_schemas.events import RunEvent
from nats.js import api as jsapi
from nats.js.errors import BadRequestError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import exc as sa_exc

from halo_registry.core.ingest import IngestStats
from halo_registry.core.store import RegistryStore
from halo_registry.settings import RegistrySettings

log = logging.getLogger("halo_registry.ingest")

#: Database errors that say "not now" rather than "never": retried, never counted against an event.
TRANSIENT = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)

_EVENT_LABEL = {"RunStarted": "started", "RunProgressed": "progressed", "RunCheckpointed": "checkpointed",
                "RunArtifactAdded": "artifact-added", "RunFinished": "finished"}


class IngestMetrics:
    """Prometheus metrics of the ingest (listed in docs/metrics.md)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter("halo_registry_events_ingested_total", "Run events applied to the database",
                              ["event"], registry=registry)
        self.points = Counter("halo_registry_metric_points_ingested_total", "Metric points written by ingest",
                              registry=registry)
        self.failures = Counter("halo_registry_ingest_failures_total",
                                "Run events given up after repeated failures or undecodable", registry=registry)
        self.batch_seconds = Histogram("halo_registry_ingest_batch_seconds", "Time to apply one batch of events",
                                       registry=registry)
        self.lag = Gauge("halo_registry_ingest_lag_seconds",
                         "Age of the newest applied event when it was applied", registry=registry)

    def observe(self, stats: IngestStats, events: Sequence[RunEvent], seconds: float) -> None:
        for kind, n in stats.by_type.items():
            self.events.labels(_EVENT_LABEL.get(kind, "other")).inc(n)
        self.points.inc(stats.points)
        self.batch_seconds.observe(seconds)
        if events:
            newest = max(e.ts.timestamp() for e in events)
            self.lag.set(max(time.time() - newest, 0.0))


class IngestWorker(Subscription):
    """Start with :meth:`start` (returns itself, a Subscription the service tracks); :meth:`stop`
    finishes the batch in hand, so nothing applied is left unacknowledged on a clean stop."""

    def __init__(self, store: RegistryStore, bus: Bus, settings: RegistrySettings, metrics: IngestMetrics) -> None:
        self.store, self.bus, self.settings, self.metrics = store, bus, settings, metrics
        self.durable = subjects.REGISTRY_INGEST_DURABLE
        self.totals = IngestStats()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fallback: Subscription | None = None
        self._psub: Any = None

    async def start(self) -> IngestWorker:
        if isinstance(self.bus, NatsBus):
            self._psub = await self._subscribe(self.bus)
            self._task = asyncio.create_task(self._pump(), name="registry-ingest")
        else:
            self._fallback = await self.bus.subscribe_events(subjects.RUN_EVENTS_WILDCARD, self._on_record,
                                                             durable=self.durable)
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.settings.drain_timeout_s)
            except TimeoutError:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._psub is not None:
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()  # the durable consumer itself stays, keeping our position
        if self._fallback is not None:
            await self._fallback.stop()

    # ---- in-memory / generic bus: one event per transaction ---------------------------------
    async def _on_record(self, record: EventRecord[Any]) -> None:
        if isinstance(record.message, RunEvent):
            await self._apply([record.message])

    async def _apply(self, events: Sequence[RunEvent]) -> IngestStats:
        started = time.perf_counter()
        stats = await asyncio.to_thread(self.store.apply_events, events)
        self.metrics.observe(stats, events, time.perf_counter() - started)
        self.totals.add(stats)
        return stats

    # ---- NATS: batched pull consumer ---------------------------------------------------------
    async def _subscribe(self, bus: NatsBus) -> Any:
        s = self.settings
        config = jsapi.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=s.ingest_ack_wait_s,
            deliver_policy=jsapi.DeliverPolicy.ALL,
            filter_subject=subjects.RUN_EVENTS_WILDCARD,
            max_ack_pending=max(4 * s.ingest_batch, 1000),
        )
        try:
            return await bus.js.pull_subscribe(subjects.RUN_EVENTS_WILDCARD, durable=self.durable,
                                               stream=subjects.STREAM_EVENTS, config=config)
        except BadRequestError:
            # The durable exists with other settings (a changed batch size or ack wait): update it.
            await bus.js.add_consumer(subjects.STREAM_EVENTS, config)
            return await bus.js.pull_subscribe(subjects.RUN_EVENTS_WILDCARD, durable=self.durable,
                                               stream=subjects.STREAM_EVENTS)

    async def _fetch(self) -> list[Any]:
        try:
            return await self._psub.fetch(self.settings.ingest_batch, timeout=self.settings.ingest_wait_s)
        except asyncio.CancelledError:
            raise
        except Exception:  # timeout (nothing new), or disconnected: try again
            if not self.bus.connected:
                await asyncio.sleep(0.5)
            return []

    async def _pump(self) -> None:
        # Pipelined: while one batch commits in a worker thread, the next is fetched and decoded.
        # Commits stay strictly in order (one in flight), so a run's events apply in stream order.
        committing: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                msgs = await self._fetch()
                good = await self._decode(msgs) if msgs else []
                if committing is not None:
                    await committing
                    committing = None
                if good:
                    committing = asyncio.create_task(self._commit(good))
        finally:
            if committing is not None:
                await committing

    async def _decode(self, msgs: Sequence[Any]) -> list[tuple[Any, RunEvent]]:
        good: list[tuple[Any, RunEvent]] = []
        for m in msgs:
            try:
                ev = codec.decode(m.data, dict(m.headers or {}), RunEvent)
            except Exception as exc:
                log.warning("dropping undecodable event on %s: %s", m.subject, exc)
                self.metrics.failures.inc()
                with contextlib.suppress(Exception):
                    await m.term()
                continue
            good.append((m, ev))
        return good

    async def _commit(self, good: list[tuple[Any, RunEvent]]) -> None:
        events = [ev for _, ev in good]
        delay = 0.2
        while True:
            try:
                await self._apply(events)
                break
            except TRANSIENT as exc:
                # The database is away (or locked): keep the batch leased and retry; giving events
                # up, or letting them count deliveries towards max_deliver, would lose data.
                if self._stopping.is_set():
                    await self._nak([m for m, _ in good])
                    return
                log.warning("database unavailable (%s); retrying %d events in %.1fs", exc.orig, len(good), delay)
                for m, _ in good:
                    with contextlib.suppress(Exception):
                        await m.in_progress()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception:
                log.exception("applying a batch of %d events failed; retrying them one by one", len(good))
                await self._one_by_one(good)
                return
        await self._ack([m for m, _ in good])

    async def _one_by_one(self, good: list[tuple[Any, RunEvent]]) -> None:
        for m, ev in good:
            try:
                await self._apply([ev])
            except TRANSIENT:
                await self._nak([m])
                continue
            except Exception as exc:
                if m.metadata.num_delivered >= self.settings.ingest_max_deliver:
                    log.error("giving up event %s seq %s of %s after %d deliveries: %s", m.subject, ev.seq, ev.run_id,
                              m.metadata.num_delivered, exc)
                    self.metrics.failures.inc()
                    with contextlib.suppress(Exception):
                        await m.term()
                else:
                    await self._nak([m])
                continue
            await self._ack([m])

    async def _nak(self, msgs: Sequence[Any]) -> None:
        for m in msgs:
            with contextlib.suppress(Exception):
                await m.nak(delay=1.0)

    async def _ack(self, msgs: Sequence[Any]) -> None:
        """Ack after commit. A crash before the acks reach the server only causes redelivery."""
        for m in msgs:
            with contextlib.suppress(Exception):
                await m.ack()
