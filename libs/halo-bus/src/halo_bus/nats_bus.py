"""The real bus: nats-py core request/reply (NATS micro services), JetStream work queues and
events, and a JetStream KV bucket for job state. Reconnects forever; JetStream state survives a
nats-server restart because the streams use file storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import nats.micro
from halo_common.errors import Unavailable
from halo_schemas.health import ServiceInfo
from nats.aio.client import _HEADER_KEY_RE, _HEADER_VALUE_NEWLINES, Client
from nats.aio.msg import Msg
from nats.errors import BadHeaderError, BadSubjectError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError
from nats.protocol import command as prot_command
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

log = logging.getLogger("halo_bus.nats")

S = TypeVar("S", bound=Subscription)

EVENTS_MAX_AGE_S = 30 * 24 * 3600
DUPLICATE_WINDOW_S = 600


def _headers(msg: Msg) -> dict[str, str]:
    return dict(msg.headers or {})


_HEADER_WS = re.compile(r"\s")
_CHECKED_NAMES: dict[str, str] = {}  # header name as given -> stripped name that passed the check


class _Client(Client):
    """nats-py's client with faster message-header code (every halo message carries headers).
    nats-py's parser tests each character of each header name with a generator expression, which
    made header parsing the largest single cost halo-bus added to a request/reply, and its encoder
    extends a bytearray part by part; these give the same dict and the same bytes for every input
    (tests/test_nats_headers.py compares them with nats-py's)."""

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue  # as nats-py: a non-ASCII name is skipped
            if _HEADER_WS.search(key):
                continue  # whitespace inside a name: invalid, skipped (str.isspace and \s agree)
            out[key] = value.strip().decode("utf-8", "replace")
        return out

    @staticmethod
    def _header_block(headers: dict[str, Any]) -> bytes:
        """The ``NATS/1.0`` header block nats-py would send for ``headers``, byte for byte, built
        with one join and one encode instead of nats-py's bytearray extend per part; names already
        checked are remembered (a process sends a handful of distinct names)."""
        lines = ["NATS/1.0"]
        for name, value in headers.items():
            key = _CHECKED_NAMES.get(name)
            if key is None:
                key = name.strip()
                if not key:
                    continue  # nats-py skips an empty name
                if not _HEADER_KEY_RE.fullmatch(key):
                    raise BadHeaderError(key)
                if len(_CHECKED_NAMES) < 256:
                    _CHECKED_NAMES[name] = key
            lines.append(f"{key}: {value.strip().translate(_HEADER_VALUE_NEWLINES)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode()

    async def _send_publish(
        self, subject: str, reply: str, payload: bytes, payload_size: int, headers: dict[str, Any] | None
    ) -> None:
        # nats-py's own _send_publish (nats-py 2.x) with the header block built by _header_block.
        if subject == "":
            raise BadSubjectError
        if headers is None:
            cmd = prot_command.pub_cmd(subject, reply, payload)
        else:
            cmd = prot_command.hpub_cmd(subject, reply, self._header_block(headers), payload)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(cmd)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()


class _MicroService(ServiceRegistration):
    def __init__(self, svc: nats.micro.Service, name: str):
        self._svc, self.name, self.id = svc, name, svc.id

    async def add_endpoint(self, subject: str, handler: Handler, request_type: type[BaseModel]) -> None:
        async def on_request(req: nats.micro.Request) -> None:
            data, headers = await run_rpc_handler(handler, request_type, req.subject, req.data, req.headers)
            await req.respond(data, headers=headers)

        # Endpoint names must be simple tokens; the subject carries the full address.
        name = subject.split(".")[-1]
        await self._svc.add_endpoint(name=name, subject=subject, handler=on_request)
        # Make the subscription known to the server before we report ready: a request sent
        # right after start must not see "no responders".
        await self._svc._client.flush()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._svc.stop()


class _NatsDelivery(JobDelivery[Any]):
    def __init__(self, msg: Msg, message: Any):
        self._msg, self.message = msg, message
        self.subject, self.headers = msg.subject, _headers(msg)
        self.num_delivered = msg.metadata.num_delivered

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay_s: float | None = None) -> None:
        await self._msg.nak(delay=delay_s)

    async def term(self) -> None:
        await self._msg.term()

    async def in_progress(self) -> None:
        await self._msg.in_progress()


class _LoopSubscription(Subscription):
    def __init__(self, tasks: list[asyncio.Task[None]], psubs: list[Any]):
        self.tasks, self.psubs = tasks, psubs

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.tasks:
            # Bounded: a task stuck in a library call must not hang shutdown.
            _done, pending = await asyncio.wait(self.tasks, timeout=5.0)
            for t in pending:
                log.warning("consumer task did not stop within 5 s: %r", t)
        for p in self.psubs:
            with contextlib.suppress(Exception):
                await p.unsubscribe()


class _BatchConsumer(Subscription):
    """The pump behind :meth:`NatsBus.consume_events_batched` (semantics in halo_bus.api)."""

    NAK_DELAY_S = 1.0

    def __init__(self, psub: Any, handler: BatchHandler, message_type: type[BaseModel] | None, *, label: str,
                 batch_size: int, max_wait_s: float, ack_wait_s: float, drain_timeout_s: float,
                 on_undecodable: Callable[[str, Exception], None] | None) -> None:
        self._psub, self._handler, self._type, self._label = psub, handler, message_type, label
        self._batch, self._max_wait, self._drain = batch_size, max_wait_s, drain_timeout_s
        self._heartbeat_s = max(ack_wait_s / 3, 0.05)
        self._on_undecodable = on_undecodable
        self._held: dict[int, Msg] = {}  # fetched, not yet acked or naked: their leases are kept
        self._stopping = False
        self._task = asyncio.create_task(self._pump(), name=f"consume-batched {label}")
        self._hb = asyncio.create_task(self._heartbeat(), name=f"consume-batched heartbeat {label}")

    async def _fetch_batch(self) -> list[tuple[Msg, EventRecord[Any]]]:
        out: list[tuple[Msg, EventRecord[Any]]] = []
        for m in await _fetch(self._psub, self._batch, timeout=self._max_wait):
            headers = _headers(m)
            try:
                meta = m.metadata
                record = EventRecord(m.subject, codec.decode(m.data, headers, self._type), meta.sequence.stream,
                                     headers, meta.num_delivered)
            except Exception as exc:
                log.warning("dropping undecodable event on %s: %s", m.subject, exc)
                with contextlib.suppress(Exception):
                    await m.term()
                if self._on_undecodable is not None:
                    try:
                        self._on_undecodable(m.subject, exc)
                    except Exception:
                        log.exception("on_undecodable callback failed")
                continue
            self._held[id(m)] = m
            out.append((m, record))
        return out

    async def _pump(self) -> None:
        nxt: asyncio.Task[list[tuple[Msg, EventRecord[Any]]]] | None = asyncio.create_task(self._fetch_batch())
        try:
            while nxt is not None:
                batch = await nxt
                nxt = None
                if self._stopping:
                    # Fetched but never started: hand it back at once rather than after ack_wait.
                    await self._settle(batch, retry=[m for m, _ in batch], delay=None)
                    return
                nxt = asyncio.create_task(self._fetch_batch())  # overlaps the handler below
                if batch:
                    await self._run(batch)
        finally:
            if nxt is not None:  # cancelled (stop timed out): the leases lapse, JetStream redelivers
                nxt.cancel()

    async def _run(self, batch: list[tuple[Msg, EventRecord[Any]]]) -> None:
        records = [r for _, r in batch]
        try:
            with tracing.server_span("consume", self._label, None):
                retry = await self._handler(records)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch handler on %s failed; %d events will be redelivered", self._label, len(batch))
            await self._settle(batch, retry=[m for m, _ in batch], delay=self.NAK_DELAY_S)
            return
        again = {id(r) for r in retry or ()}
        await self._settle(batch, retry=[m for m, r in batch if id(r) in again], delay=self.NAK_DELAY_S)

    async def _settle(self, batch: list[tuple[Msg, EventRecord[Any]]], retry: list[Msg], delay: float | None) -> None:
        """Nak ``retry``, ack the rest. A lost ack only causes a redelivery (consumers are idempotent)."""
        naks = {id(m) for m in retry}
        for m, _ in batch:
            with contextlib.suppress(Exception):
                if id(m) in naks:
                    await m.nak(delay=delay)
                else:
                    await m.ack()
            self._held.pop(id(m), None)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            for m in list(self._held.values()):
                with contextlib.suppress(Exception):
                    await m.in_progress()

    async def stop(self) -> None:
        self._stopping = True
        if not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self._drain)
            except TimeoutError:
                log.warning("batch consumer on %s did not finish within %.0f s; its events will be redelivered",
                            self._label, self._drain)
                self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._hb.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._hb
        with contextlib.suppress(Exception):
            await self._psub.unsubscribe()  # the durable consumer stays, keeping the position


class NatsBus(Bus):
    """Connect with :meth:`connect`; ``close()`` drains. All operations are typed (see halo_bus.api)."""

    def __init__(self, nc: Client, js: JetStreamContext):
        self.nc, self.js = nc, js
        self._kv: dict[str, Any] = {}
        self._micro: list[_MicroService] = []
        self._closing: dict[str, bool] = {"now": False}
        self._subs: list[Subscription] = []

    @classmethod
    async def connect(
        cls,
        servers: str | list[str],
        *,
        name: str = "halo",
        connect_timeout: float = 2.0,
        ensure_streams: bool = True,
        max_reconnect_attempts: int = -1,
        user: str | None = None,
        password: str | None = None,
    ) -> NatsBus:
        """Connect (reconnecting forever after the first success) and make sure streams exist.

        Credentials: ``user``/``password``; when both are None, ``HALO_NATS_USER`` /
        ``HALO_NATS_PASSWORD`` from the environment (what ``halo-forge up``, compose and helm give
        every service), so any process of the stack authenticates without further wiring.

        Raises :class:`Unavailable` when the first connection cannot be made, and
        :class:`~halo_common.settings.ConfigError` naming HALO_NATS_USER / HALO_NATS_PASSWORD when
        the server refuses the credentials (retrying cannot help, so callers must not loop)."""
        # Local imports keep this file's import block (shared with other work) untouched.
        import os

        from halo_common.settings import ConfigError

        urls = servers.split(",") if isinstance(servers, str) else servers
        if user is None and password is None:
            user = os.environ.get("HALO_NATS_USER") or None
            password = os.environ.get("HALO_NATS_PASSWORD") or None
        shown = ",".join(_redact_url(u) for u in urls)
        connecting = {"now": True}

        class _Refused(Exception):
            pass

        async def on_error(e: Exception) -> None:
            # nats-py retries a refused CONNECT forever; raising here ends the first connect.
            if connecting["now"] and "authorization violation" in str(e).lower():
                raise _Refused(str(e))
            log.debug("nats error: %s", e)

        closing = {"now": False}

        async def on_disconnect() -> None:
            if not closing["now"]:
                log.warning("disconnected from NATS; reconnecting")

        async def on_reconnect() -> None:
            log.info("reconnected to NATS")

        nc = _Client()
        try:
            await nc.connect(
                urls,
                name=name,
                connect_timeout=connect_timeout,
                allow_reconnect=True,
                max_reconnect_attempts=max_reconnect_attempts,
                reconnect_time_wait=0.5,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                user=user,
                password=password,
            )
        except _Refused:
            closing["now"] = True
            with contextlib.suppress(Exception):
                await nc.close()
            why = "refused the credentials" if user else "requires credentials and none were given"
            raise ConfigError(f"invalid setting: HALO_NATS_USER / HALO_NATS_PASSWORD: NATS at {shown} {why} "
                              "(Authorization Violation)") from None
        except Exception as exc:
            closing["now"] = True
            with contextlib.suppress(Exception):
                await nc.close()
            raise Unavailable(f"cannot connect to NATS at {shown}: {exc}", param="nats_url") from None
        connecting["now"] = False
        bus = cls(nc, nc.jetstream(timeout=5.0))
        bus._closing = closing
        if ensure_streams:
            await bus.ensure_streams()
        return bus

    async def ensure_streams(self) -> None:
        """Create (or update) HALO_JOBS, HALO_EVENTS and the job-state KV bucket."""
        configs = [
            jsapi.StreamConfig(
                name=subjects.STREAM_JOBS,
                subjects=[subjects.JOBS_WILDCARD],
                retention=jsapi.RetentionPolicy.WORK_QUEUE,
                storage=jsapi.StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_S,
            ),
            jsapi.StreamConfig(
                name=subjects.STREAM_EVENTS,
                subjects=[subjects.EVENTS_WILDCARD],
                retention=jsapi.RetentionPolicy.LIMITS,
                storage=jsapi.StorageType.FILE,
                max_age=EVENTS_MAX_AGE_S,
                duplicate_window=DUPLICATE_WINDOW_S,
            ),
        ]
        for cfg in configs:
            try:
                await self.js.add_stream(cfg)
            except BadRequestError:
                await self.js.update_stream(cfg)
        await self._bucket(subjects.KV_JOB_STATE)

    # ---- request/reply -------------------------------------------------------------------
    async def add_service(
        self, name: str, version: str, description: str = "", metadata: dict[str, str] | None = None
    ) -> ServiceRegistration:
        svc = await nats.micro.add_service(
            self.nc, name=name, version=version, description=description or name,
            metadata=dict(metadata or {}), queue_group=name,
        )
        reg = _MicroService(svc, name)
        self._micro.append(reg)
        return reg

    async def request(self, subject: str, msg: BaseModel, reply_type: type[M], timeout: float = 5.0) -> M:
        with tracing.client_span("rpc", subject) as trace_headers:
            data, headers = codec.encode(msg, trace_headers)
            try:
                reply = await self.nc.request(subject, data, timeout=timeout, headers=headers)
            except NoRespondersError:
                raise Unavailable(f"no service answers on {subject}", param=subject) from None
            except (NatsTimeoutError, TimeoutError):
                raise Unavailable(f"request to {subject} timed out after {timeout}s", param=subject) from None
            rheaders = reply.headers  # read only: no copy
            raise_if_error(rheaders)
            return codec.decode(reply.data, rheaders, reply_type)

    async def discover(self, timeout: float = 0.5) -> list[ServiceInfo]:
        inbox = self.nc.new_inbox()
        replies: list[bytes] = []

        async def collect(m: Msg) -> None:
            replies.append(m.data)

        sub = await self.nc.subscribe(inbox, cb=collect)
        try:
            await self.nc.publish("$SRV.INFO", b"", reply=inbox)
            await self.nc.flush()
            await asyncio.sleep(timeout)
        finally:
            await sub.unsubscribe()
        out = []
        for raw in replies:
            try:
                info = json.loads(raw)
            except ValueError:
                continue
            out.append(ServiceInfo(
                name=info.get("name", "?"), id=info.get("id", "?"), version=info.get("version", "?"),
                description=info.get("description"),
                endpoints=[e.get("subject", "") for e in info.get("endpoints") or []],
                metadata=info.get("metadata") or {},
            ))
        return sorted(out, key=lambda s: (s.name, s.id))

    # ---- work queues ---------------------------------------------------------------------
    async def submit_job(self, subject: str, msg: BaseModel, msg_id: str) -> bool:
        with tracing.client_span("publish", subject) as trace_headers:
            data, headers = codec.encode(msg, {**trace_headers, codec.MSG_ID_HEADER: msg_id})
            try:
                ack = await self.js.publish(subject, data, headers=headers, stream=subjects.STREAM_JOBS)
            except Exception as exc:
                raise Unavailable(f"cannot enqueue job on {subject}: {exc}", param=subject) from None
            return not ack.duplicate

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
        config = jsapi.ConsumerConfig(
            durable_name=durable,
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=max_deliver,
            filter_subject=subject,
            max_ack_pending=max(concurrency * 4, 16),
        )
        psub = await self._pull_subscribe(subject, durable, subjects.STREAM_JOBS, config)

        async def worker() -> None:
            while True:
                msgs = await _fetch(psub, 1, timeout=1.0)
                for m in msgs:
                    try:
                        message = codec.decode(m.data, _headers(m), message_type)
                    except Exception as exc:
                        log.warning("terminating undecodable job on %s: %s", m.subject, exc)
                        with contextlib.suppress(Exception):
                            await m.term()
                        continue
                    await run_job_handler(_NatsDelivery(m, message), handler, heartbeat_s=max(ack_wait_s / 3, 0.05))

        return self._keep(_LoopSubscription([asyncio.create_task(worker()) for _ in range(concurrency)], [psub]))

    def _keep(self, sub: S) -> S:
        self._subs.append(sub)
        return sub

    async def _pull_subscribe(self, subject: str, durable: str | None, stream: str, config: jsapi.ConsumerConfig) -> Any:
        try:
            return await self.js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
        except BadRequestError:
            # The durable exists with other settings (e.g. a changed ack_wait): update it in place.
            await self.js.add_consumer(stream, config)
            return await self.js.pull_subscribe(subject, durable=durable, stream=stream)

    # ---- events --------------------------------------------------------------------------
    async def publish_event(self, subject: str, msg: BaseModel, msg_id: str | None = None) -> None:
        with tracing.client_span("publish", subject) as trace_headers:
            extra = {codec.MSG_ID_HEADER: msg_id} if msg_id else {}
            data, headers = codec.encode(msg, {**trace_headers, **extra})
            try:
                await self.js.publish(subject, data, headers=headers, stream=subjects.STREAM_EVENTS)
            except Exception as exc:
                raise Unavailable(f"cannot publish event on {subject}: {exc}", param=subject) from None

    async def replay(self, filter_subject: str, message_type: type[M] | None = None) -> list[EventRecord[M]]:
        config = jsapi.ConsumerConfig(
            ack_policy=jsapi.AckPolicy.NONE,
            deliver_policy=jsapi.DeliverPolicy.ALL,
            filter_subject=filter_subject,
            inactive_threshold=30.0,
            mem_storage=True,
        )
        psub = await self.js.pull_subscribe(filter_subject, stream=subjects.STREAM_EVENTS, config=config)
        out: list[EventRecord[M]] = []
        try:
            info = await psub.consumer_info()
            remaining = info.num_pending
            while remaining > 0:
                msgs = await _fetch(psub, min(remaining, 256), timeout=2.0)
                if not msgs:
                    break
                for m in msgs:
                    remaining = m.metadata.num_pending
                    with contextlib.suppress(Exception):
                        out.append(EventRecord(m.subject, codec.decode(m.data, _headers(m), message_type),
                                               m.metadata.sequence.stream, _headers(m)))
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
        return out

    async def subscribe_events(
        self,
        filter_subject: str,
        handler: Callable[[EventRecord[Any]], Awaitable[None]],
        *,
        durable: str | None = None,
        deliver_all: bool = True,
    ) -> Subscription:
        config = jsapi.ConsumerConfig(
            durable_name=durable,
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=30.0,
            deliver_policy=jsapi.DeliverPolicy.ALL if deliver_all else jsapi.DeliverPolicy.NEW,
            filter_subject=filter_subject,
            inactive_threshold=None if durable else 60.0,
            max_ack_pending=1024,
        )
        psub = await self._pull_subscribe(filter_subject, durable, subjects.STREAM_EVENTS, config)

        async def pump() -> None:
            while True:
                for m in await _fetch(psub, 64, timeout=1.0):
                    try:
                        record = EventRecord(m.subject, codec.decode(m.data, _headers(m), None),
                                             m.metadata.sequence.stream, _headers(m))
                    except Exception as exc:
                        log.warning("skipping undecodable event on %s: %s", m.subject, exc)
                        with contextlib.suppress(Exception):
                            await m.term()
                        continue
                    try:
                        with tracing.server_span("consume", m.subject, record.headers):
                            await handler(record)
                    except Exception:
                        log.exception("event handler failed on %s; redelivering", m.subject)
                        with contextlib.suppress(Exception):
                            await m.nak(delay=1.0)
                        continue
                    with contextlib.suppress(Exception):
                        await m.ack()

        return self._keep(_LoopSubscription([asyncio.create_task(pump())], [psub]))

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
        config = jsapi.ConsumerConfig(
            durable_name=durable,
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            deliver_policy=jsapi.DeliverPolicy.ALL,
            filter_subject=filter_subject,
            # Room for the batch in hand, the one prefetched and naked ones waiting to come back.
            max_ack_pending=max(4 * batch_size, 1000),
        )
        psub = await self._pull_subscribe(filter_subject, durable, subjects.STREAM_EVENTS, config)
        return self._keep(_BatchConsumer(
            psub, handler, message_type, label=filter_subject, batch_size=batch_size, max_wait_s=max_wait_s,
            ack_wait_s=ack_wait_s, drain_timeout_s=drain_timeout_s, on_undecodable=on_undecodable,
        ))

    # ---- key/value -----------------------------------------------------------------------
    async def _bucket(self, bucket: str) -> Any:
        if bucket not in self._kv:
            try:
                self._kv[bucket] = await self.js.key_value(bucket)
            except (NotFoundError, BadRequestError, Exception):
                self._kv[bucket] = await self.js.create_key_value(
                    bucket=bucket, history=1, storage=jsapi.StorageType.FILE
                )
        return self._kv[bucket]

    async def kv_put(self, bucket: str, key: str, msg: BaseModel) -> None:
        data, headers = codec.encode(msg)
        kv = await self._bucket(bucket)
        await kv.put(check_kv_key(key), headers[codec.SCHEMA_HEADER].encode() + b"\n" + data)

    async def kv_get(self, bucket: str, key: str, message_type: type[M]) -> M | None:
        kv = await self._bucket(bucket)
        try:
            entry = await kv.get(check_kv_key(key))
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        sid, _, data = entry.value.partition(b"\n")
        return codec.decode(data, {codec.SCHEMA_HEADER: sid.decode()}, message_type)

    async def kv_keys(self, bucket: str) -> list[str]:
        kv = await self._bucket(bucket)
        try:
            return sorted(await kv.keys())
        except Exception:  # nats-py raises NoKeysError for an empty bucket
            return []

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def close(self) -> None:
        """Stop every consumer this bus started, deregister services, drain and close."""
        self._closing["now"] = True
        for sub in self._subs:
            await sub.stop()
        for svc in self._micro:
            await svc.stop()
        with contextlib.suppress(Exception):
            await self.nc.drain()
        with contextlib.suppress(Exception):
            await self.nc.close()


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library call swallowed (nats-py's fetch can turn a
    cancellation that races its own timeout into a timeout): without this a consumer loop whose
    task was cancelled would keep fetching, and shutdown would wait on it forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _fetch(psub: Any, batch: int, timeout: float) -> list[Msg]:
    """Fetch up to ``batch`` messages; [] on timeout or while disconnected (we retry)."""
    _raise_if_cancelled()
    try:
        msgs = await psub.fetch(batch, timeout=timeout)
        _raise_if_cancelled()
        return msgs
    except (NatsTimeoutError, TimeoutError):
        _raise_if_cancelled()
        return []
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        _raise_if_cancelled()
        log.debug("fetch failed (%s); retrying", exc)
        await asyncio.sleep(0.5)
        return []


def _redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
