"""The bus API every service codes against. Two implementations: :class:`~halo_bus.nats_bus.NatsBus`
(real NATS + JetStream) and :class:`~halo_bus.memory.InMemoryBus` (unit tests), run through one
shared test suite.

Usage::

    bus = await NatsBus.connect("nats://127.0.0.1:4222")
    svc = await bus.add_service("registry", "0.1.0")
    await svc.add_endpoint(subjects.rpc("registry", "health"), handler, HealthRequest)
    reply = await bus.request(subjects.rpc("registry", "health"), HealthRequest(), ServiceHealth)

    await bus.submit_job(subjects.job("trainer-torch", "sft"), envelope, msg_id=envelope.job_id)
    await bus.consume_jobs(subjects.job("trainer-torch", "sft"), "trainer-torch-sft", on_job, JobEnvelope)

    await bus.publish_event(subjects.run_event("trainer-torch", run_id, "progressed"), event)
    history = await bus.replay(subjects.run_events_filter(run_id))

    async def ingest(batch: list[EventRecord]) -> list[EventRecord]:
        db.apply([r.message for r in batch])     # one transaction for the whole batch
        return []                                # nothing to redeliver: all acked
    await bus.consume_events_batched(subjects.RUN_EVENTS_WILDCARD, "registry-ingest", ingest, batch_size=500)
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from halo_schemas.health import ServiceInfo
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[Any], Awaitable[BaseModel]]


class JobDelivery(abc.ABC, Generic[M]):
    """One delivery of a job message. Returning from the handler acks it; raising naks it for
    redelivery (a :class:`~halo_common.errors.BadRequest` terminates it instead: retrying a bad
    spec cannot help). While the handler runs, the bus heartbeats ``in_progress`` so a long job
    is not redelivered — unless the worker dies, in which case ``ack_wait`` later another worker
    gets it (``num_delivered`` > 1 tells it to resume)."""

    message: M
    subject: str
    num_delivered: int
    headers: dict[str, str]

    @abc.abstractmethod
    async def ack(self) -> None: ...

    @abc.abstractmethod
    async def nak(self, delay_s: float | None = None) -> None: ...

    @abc.abstractmethod
    async def term(self) -> None: ...

    @abc.abstractmethod
    async def in_progress(self) -> None: ...


@dataclass
class EventRecord(Generic[M]):
    """A stored event as replayed or delivered: the decoded message, its stream position and (for
    a consumer) how many times it has been delivered, this time included."""

    subject: str
    message: M
    sequence: int
    headers: dict[str, str] = field(default_factory=dict)
    num_delivered: int = 1


#: ``handler(batch)`` of :meth:`Bus.consume_events_batched`: returns the records to redeliver
#: (``None`` or empty: the whole batch is acked).
BatchHandler = Callable[[list[EventRecord[Any]]], Awaitable[Iterable[EventRecord[Any]] | None]]


class Subscription(abc.ABC):
    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop receiving. For job consumers, unacked deliveries are left for redelivery."""


class ServiceRegistration(abc.ABC):
    """A service instance registered for discovery (NATS micro); endpoints are added to it."""

    id: str
    name: str

    @abc.abstractmethod
    async def add_endpoint(self, subject: str, handler: Handler, request_type: type[BaseModel]) -> None:
        """Serve ``subject`` (queue group = service name). ``handler(req)`` returns a Message or
        raises HaloError (mapped to error headers with its code)."""

    @abc.abstractmethod
    async def stop(self) -> None: ...


class Bus(abc.ABC):
    """Typed request/reply, work queues, events and KV. See module docstring for usage."""

    # ---- request/reply -------------------------------------------------------------------
    @abc.abstractmethod
    async def add_service(
        self, name: str, version: str, description: str = "", metadata: dict[str, str] | None = None
    ) -> ServiceRegistration: ...

    @abc.abstractmethod
    async def request(self, subject: str, msg: BaseModel, reply_type: type[M], timeout: float = 5.0) -> M:
        """Send ``msg`` and decode the reply as ``reply_type``; raises HaloError from error headers,
        :class:`~halo_common.errors.Unavailable` when nobody answers in time."""

    @abc.abstractmethod
    async def discover(self, timeout: float = 0.5) -> list[ServiceInfo]:
        """Every running service instance (NATS micro ``$SRV.INFO``)."""

    # ---- work queues ---------------------------------------------------------------------
    @abc.abstractmethod
    async def submit_job(self, subject: str, msg: BaseModel, msg_id: str) -> bool:
        """Enqueue a job; ``msg_id`` dedups (a resubmission with the same id is dropped).
        Returns False when it was a duplicate."""

    @abc.abstractmethod
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
    ) -> Subscription: ...

    # ---- events --------------------------------------------------------------------------
    @abc.abstractmethod
    async def publish_event(self, subject: str, msg: BaseModel, msg_id: str | None = None) -> None:
        """Store an event in ``HALO_EVENTS``; ``msg_id`` dedups a re-published event."""

    @abc.abstractmethod
    async def replay(self, filter_subject: str, message_type: type[M] | None = None) -> list[EventRecord[M]]:
        """All stored events matching ``filter_subject``, oldest first."""

    @abc.abstractmethod
    async def subscribe_events(
        self,
        filter_subject: str,
        handler: Callable[[EventRecord[Any]], Awaitable[None]],
        *,
        durable: str | None = None,
        deliver_all: bool = True,
    ) -> Subscription:
        """Deliver events to ``handler``. A ``durable`` consumer resumes where it left off after a
        restart (acks after the handler returns; a raising handler gets the event again)."""

    @abc.abstractmethod
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
        """Deliver stored events matching ``filter_subject`` to ``handler`` in batches, through the
        durable consumer ``durable`` (a new one starts at the oldest event; a restarted one resumes
        after the last acked event).

        - ``handler(batch)`` gets up to ``batch_size`` records in stream order, one call at a time;
          an idle consumer waits up to ``max_wait_s`` for the first event of a batch. The next batch
          is fetched and decoded while the handler runs.
        - Returning acks the batch, except the records the handler returns: those are redelivered
          later (``num_delivered`` + 1), so one bad event need not hold back the rest. Raising
          redelivers the whole batch.
        - While the handler runs, the bus extends the lease of every event it holds, so a handler
          that waits (a database restarting) is not overtaken by redelivery; a consumer that dies
          gets its events redelivered ``ack_wait_s`` later.
        - An event that does not decode (unknown schema, invalid, not a ``message_type``) is
          dropped — terminated, logged and passed to ``on_undecodable(subject, error)`` — never
          handed to ``handler``.
        - ``stop()`` stops fetching, lets the batch in hand finish (up to ``drain_timeout_s``) and
          settles it as above, and hands back a fetched batch it did not start, so a clean stop
          leaves nothing handled unacked.
        """

    # ---- key/value -----------------------------------------------------------------------
    @abc.abstractmethod
    async def kv_put(self, bucket: str, key: str, msg: BaseModel) -> None: ...

    @abc.abstractmethod
    async def kv_get(self, bucket: str, key: str, message_type: type[M]) -> M | None: ...

    @abc.abstractmethod
    async def kv_keys(self, bucket: str) -> list[str]: ...

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    @abc.abstractmethod
    async def close(self) -> None: ...
