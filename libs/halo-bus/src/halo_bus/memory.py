"""In-memory bus with the same API and semantics as :class:`~halo_bus.nats_bus.NatsBus`.

Messages still go through the codec (bytes + headers), so schema and error mapping are tested
for real; work queues emulate JetStream's ack_wait redelivery, msg-id dedup and max_deliver;
events are stored per subject and replayable; durable event consumers keep their position.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from halo_common.errors import Unavailable
from halo_schemas.health import ServiceInfo
from pydantic import BaseModel

from halo_bus import codec, subjects, tracing
from halo_bus._shared import check_kv_key, raise_if_error, run_job_handler, run_rpc_handler
from halo_bus.api import (
    BatchHandler,
    Bus,
    EventRecord,
    Handler,
    JobDelivery,
    M,
    ServiceRegistration,
    Subscription,
)

log = logging.getLogger("halo_bus.memory")
S = TypeVar("S", bound=Subscription)


@dataclass
class _Cursor:
    """A durable batched consumer's state, like JetStream's: what is acked, what a subscription
    holds, how often each event was delivered, and when a naked one may come again."""

    acked: set[int] = field(default_factory=set)
    held: dict[int, object] = field(default_factory=dict)  # seq -> holding subscription
    deliveries: dict[int, int] = field(default_factory=dict)
    not_before: dict[int, float] = field(default_factory=dict)


@dataclass
class _StoredJob:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    deliveries: int = 0
    acked: bool = False
    terminated: bool = False
    lease_until: float = 0.0  # monotonic deadline of the current delivery's lease
    holder: object | None = None


@dataclass
class _Endpoint:
    handler: Handler
    request_type: type[BaseModel]
    owner: _MemService


class _MemService(ServiceRegistration):
    def __init__(self, bus: InMemoryBus, name: str, version: str, description: str, metadata: dict[str, str]):
        self.bus, self.name, self.version = bus, name, version
        self.description, self.metadata = description, metadata
        self.id = uuid.uuid4().hex[:22]
        self.subjects: list[str] = []

    async def add_endpoint(self, subject: str, handler: Handler, request_type: type[BaseModel]) -> None:
        self.bus._endpoints.setdefault(subject, []).append(_Endpoint(handler, request_type, self))
        self.subjects.append(subject)

    async def stop(self) -> None:
        for subject in self.subjects:
            self.bus._endpoints[subject] = [e for e in self.bus._endpoints.get(subject, []) if e.owner is not self]
        self.bus._services.pop(self.id, None)


class _MemDelivery(JobDelivery[Any]):
    def __init__(self, bus: InMemoryBus, job: _StoredJob, message: Any, ack_wait_s: float, holder: object):
        self.bus, self.job, self.message = bus, job, message
        self.subject, self.headers = job.subject, dict(job.headers)
        self.num_delivered = job.deliveries
        self.ack_wait_s, self.holder = ack_wait_s, holder

    def _mine(self) -> bool:
        return self.job.holder is self.holder and not (self.job.acked or self.job.terminated)

    async def ack(self) -> None:
        if self._mine():
            self.job.acked = True
            self.bus._job_changed.set()

    async def nak(self, delay_s: float | None = None) -> None:
        if self._mine():
            self.job.holder = None
            self.job.lease_until = time.monotonic() + (delay_s or 0.0)
            self.bus._job_changed.set()

    async def term(self) -> None:
        if self._mine():
            self.job.terminated = True
            self.bus._job_changed.set()

    async def in_progress(self) -> None:
        if self._mine():
            self.job.lease_until = time.monotonic() + self.ack_wait_s


class _TaskSubscription(Subscription):
    def __init__(self, tasks: list[asyncio.Task[None]], on_stop: Callable[[], None] | None = None):
        self.tasks, self.on_stop = tasks, on_stop

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5.0)  # bounded, as in NatsBus
        if self.on_stop:
            self.on_stop()


class _StopSubscription(Subscription):
    def __init__(self, stop: Callable[[], Awaitable[None]]) -> None:
        self._stop = stop

    async def stop(self) -> None:
        await self._stop()


class InMemoryBus(Bus):
    """Single-process bus for unit tests. ``poll_s`` is how often queues look for expired leases."""

    def __init__(self, poll_s: float = 0.02) -> None:
        self._endpoints: dict[str, list[_Endpoint]] = {}
        self._services: dict[str, _MemService] = {}
        self._rr = itertools.count()
        self._jobs: list[_StoredJob] = []
        self._job_ids: set[str] = set()
        self._job_changed = asyncio.Event()
        self._events: list[tuple[int, str, bytes, dict[str, str]]] = []
        self._event_ids: set[str] = set()
        self._event_added = asyncio.Event()
        self._durables: dict[str, int] = {}
        self._cursors: dict[str, _Cursor] = {}
        self._kv: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}
        self._seq = itertools.count(1)
        self._poll_s = poll_s
        self._closed = False
        self._subs: list[Subscription] = []

    def _keep(self, sub: S) -> S:
        self._subs.append(sub)
        return sub

    # ---- request/reply -------------------------------------------------------------------
    async def add_service(
        self, name: str, version: str, description: str = "", metadata: dict[str, str] | None = None
    ) -> ServiceRegistration:
        svc = _MemService(self, name, version, description, dict(metadata or {}))
        self._services[svc.id] = svc
        return svc

    async def request(self, subject: str, msg: BaseModel, reply_type: type[M], timeout: float = 5.0) -> M:
        with tracing.client_span("rpc", subject) as trace_headers:
            data, headers = codec.encode(msg, trace_headers)
            endpoints = self._endpoints.get(subject) or []
            if not endpoints:
                raise Unavailable(f"no service answers on {subject}", param=subject)
            ep = endpoints[next(self._rr) % len(endpoints)]  # queue group: one instance answers
            try:
                rdata, rheaders = await asyncio.wait_for(
                    run_rpc_handler(ep.handler, ep.request_type, subject, data, headers), timeout
                )
            except TimeoutError:
                raise Unavailable(f"request to {subject} timed out after {timeout}s", param=subject) from None
            raise_if_error(rheaders)
            return codec.decode(rdata, rheaders, reply_type)

    async def discover(self, timeout: float = 0.5) -> list[ServiceInfo]:
        return [
            ServiceInfo(name=s.name, id=s.id, version=s.version, description=s.description,
                        endpoints=list(s.subjects), metadata=s.metadata)
            for s in self._services.values()
        ]

    # ---- work queues ---------------------------------------------------------------------
    async def submit_job(self, subject: str, msg: BaseModel, msg_id: str) -> bool:
        if msg_id in self._job_ids:
            return False
        with tracing.client_span("publish", subject) as trace_headers:
            data, headers = codec.encode(msg, {**trace_headers, codec.MSG_ID_HEADER: msg_id})
        self._job_ids.add(msg_id)
        self._jobs.append(_StoredJob(next(self._seq), subject, data, headers))
        self._job_changed.set()
        return True

    def _next_job(self, subject: str, max_deliver: int) -> _StoredJob | None:
        now = time.monotonic()
        for job in self._jobs:
            if job.acked or job.terminated or not subjects.matches(subject, job.subject):
                continue
            if job.deliveries >= max_deliver and (job.holder is None or job.lease_until <= now):
                continue
            if job.lease_until <= now:
                return job
        return None

    async def consume_jobs(
        self,
        subject: str,
        durable: str,
        handler: Callable[[JobDelivery[Any]], Awaitable[None]],
        message_type: type[BaseModel],
        *,
        ack_wait_s: float = 30.0,
        max_deliver: int = 5,
        concurrency: int = 1,
    ) -> Subscription:
        async def worker() -> None:
            me = object()
            while True:
                job = self._next_job(subject, max_deliver)
                if job is None:
                    self._job_changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._job_changed.wait(), self._poll_s)
                    continue
                job.deliveries += 1
                job.holder = me
                job.lease_until = time.monotonic() + ack_wait_s
                try:
                    message = codec.decode(job.data, job.headers, message_type)
                except Exception:
                    job.terminated = True
                    continue
                delivery = _MemDelivery(self, job, message, ack_wait_s, me)
                await run_job_handler(delivery, handler, heartbeat_s=max(ack_wait_s / 3, 0.01))

        return self._keep(_TaskSubscription([asyncio.create_task(worker()) for _ in range(concurrency)]))

    # ---- events --------------------------------------------------------------------------
    async def publish_event(self, subject: str, msg: BaseModel, msg_id: str | None = None) -> None:
        if msg_id is not None:
            if msg_id in self._event_ids:
                return
            self._event_ids.add(msg_id)
        with tracing.client_span("publish", subject) as trace_headers:
            extra = {codec.MSG_ID_HEADER: msg_id} if msg_id else {}
            data, headers = codec.encode(msg, {**trace_headers, **extra})
        self._events.append((next(self._seq), subject, data, headers))
        self._event_added.set()

    def _record(self, item: tuple[int, str, bytes, dict[str, str]], message_type: type[Any] | None) -> EventRecord[Any]:
        seq, subject, data, headers = item
        return EventRecord(subject, codec.decode(data, headers, message_type), seq, dict(headers))

    async def replay(self, filter_subject: str, message_type: type[M] | None = None) -> list[EventRecord[M]]:
        return [self._record(e, message_type) for e in self._events if subjects.matches(filter_subject, e[1])]

    async def subscribe_events(
        self,
        filter_subject: str,
        handler: Callable[[EventRecord[Any]], Awaitable[None]],
        *,
        durable: str | None = None,
        deliver_all: bool = True,
    ) -> Subscription:
        start = self._durables.get(durable, 0) if durable else (0 if deliver_all else (self._events[-1][0] if self._events else 0))

        async def pump() -> None:
            last = start
            while True:
                pending = [e for e in self._events if e[0] > last and subjects.matches(filter_subject, e[1])]
                if not pending:
                    self._event_added.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._event_added.wait(), self._poll_s)
                    continue
                for e in pending:
                    try:
                        record = self._record(e, None)
                    except Exception:
                        last = e[0]
                        continue
                    try:
                        await handler(record)
                    except Exception:
                        # Like a NATS nak: keep the position and deliver this event again shortly.
                        await asyncio.sleep(self._poll_s)
                        break
                    last = e[0]
                    if durable:
                        self._durables[durable] = last

        return self._keep(_TaskSubscription([asyncio.create_task(pump())]))

    async def consume_events_batched(
        self,
        filter_subject: str,
        durable: str,
        handler: BatchHandler,
        *,
        message_type: type[BaseModel] | None = None,
        batch_size: int = 100,
        max_wait_s: float = 1.0,
        ack_wait_s: float = 30.0,
        drain_timeout_s: float = 10.0,
        on_undecodable: Callable[[str, Exception], None] | None = None,
    ) -> Subscription:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cur = self._cursors.setdefault(durable, _Cursor())
        me = object()
        stopping = asyncio.Event()

        def next_batch() -> list[tuple[int, str, bytes, dict[str, str]]]:
            now, out = time.monotonic(), []
            for e in self._events:
                seq = e[0]
                if seq in cur.acked or seq in cur.held or cur.not_before.get(seq, 0.0) > now:
                    continue
                if subjects.matches(filter_subject, e[1]):
                    out.append(e)
                    if len(out) >= batch_size:
                        break
            return out

        def settle(seqs: list[int], retry: set[int], delay: float) -> None:
            for seq in seqs:
                cur.held.pop(seq, None)
                if seq in retry:
                    cur.not_before[seq] = time.monotonic() + delay
                else:
                    cur.acked.add(seq)

        async def pump() -> None:
            while not stopping.is_set():
                batch = next_batch()
                if not batch:
                    self._event_added.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._event_added.wait(), min(self._poll_s, max_wait_s))
                    continue
                records: list[tuple[int, EventRecord[Any]]] = []
                for seq, subject, data, headers in batch:
                    cur.deliveries[seq] = cur.deliveries.get(seq, 0) + 1
                    try:
                        message = codec.decode(data, headers, message_type)
                    except Exception as exc:
                        cur.acked.add(seq)  # terminated, as on NATS
                        log.warning("dropping undecodable event on %s: %s", subject, exc)
                        if on_undecodable is not None:
                            try:
                                on_undecodable(subject, exc)
                            except Exception:
                                log.exception("on_undecodable callback failed")
                        continue
                    cur.held[seq] = me
                    records.append((seq, EventRecord(subject, message, seq, dict(headers), cur.deliveries[seq])))
                if not records:
                    continue
                seqs = [seq for seq, _ in records]
                try:
                    retry = await handler([r for _, r in records])
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("batch handler on %s failed; %d events will be redelivered", filter_subject, len(seqs))
                    settle(seqs, set(seqs), self._poll_s)  # like a NATS nak (shorter delay: tests)
                    continue
                again = {id(r) for r in retry or ()}
                settle(seqs, {seq for seq, r in records if id(r) in again}, self._poll_s)

        task = asyncio.create_task(pump())

        def release() -> None:
            # A stopped (or dead) consumer's events become deliverable again, as when ack_wait lapses.
            for seq in [s for s, holder in cur.held.items() if holder is me]:
                del cur.held[seq]

        async def stop() -> None:
            stopping.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), drain_timeout_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            release()

        return self._keep(_StopSubscription(stop))

    # ---- key/value -----------------------------------------------------------------------
    async def kv_put(self, bucket: str, key: str, msg: BaseModel) -> None:
        self._kv[(bucket, check_kv_key(key))] = codec.encode(msg)

    async def kv_get(self, bucket: str, key: str, message_type: type[M]) -> M | None:
        item = self._kv.get((bucket, check_kv_key(key)))
        return None if item is None else codec.decode(item[0], item[1], message_type)

    async def kv_keys(self, bucket: str) -> list[str]:
        return sorted(k for b, k in self._kv if b == bucket)

    @property
    def connected(self) -> bool:
        return not self._closed

    async def close(self) -> None:
        """Stop every consumer started on this bus."""
        self._closed = True
        for sub in self._subs:
            await sub.stop()
