"""Logic shared by both bus implementations, so they behave the same by construction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

from halo_common.errors import BadRequest, HaloError
from pydantic import BaseModel

from halo_bus import codec, tracing
from halo_bus.api import Handler, JobDelivery

log = logging.getLogger("halo_bus")


async def run_rpc_handler(
    handler: Handler, request_type: type[BaseModel], subject: str, data: bytes, headers: dict[str, str] | None
) -> tuple[bytes, dict[str, str]]:
    """Decode (validating into ``request_type``), call, encode. Any failure becomes micro error
    headers; nothing escapes."""
    with tracing.server_span("rpc", subject, headers):
        try:
            req = codec.decode(data, headers, request_type)
            reply = await handler(req)
            return codec.encode(reply)
        except HaloError as exc:
            return error_reply(exc)
        except Exception as exc:  # a handler bug must not kill the service
            log.exception("rpc handler for %s failed", subject)
            return error_reply(HaloError(f"{type(exc).__name__}: {exc}"))


#: What NATS KV accepts as a key (nats-py checks with re.match and "$", which lets a final "\n" through).
_KV_KEY = re.compile(r"[-/_=.A-Za-z0-9]+")


def check_kv_key(key: str) -> str:
    """``key`` when the key/value store accepts it, else a :class:`BadRequest` naming it: ASCII
    letters, digits and ``-/_=.``, no empty ``.``-separated token. Both buses check, so an
    InMemoryBus refuses what NATS would."""
    if not isinstance(key, str) or not _KV_KEY.fullmatch(key) or ".." in key or key[0] == "." or key[-1] == ".":
        raise BadRequest(f"invalid key/value key {key!r}: use ASCII letters, digits and -/_=. (no empty '.' token)",
                         param="key")
    return key


def error_reply(exc: HaloError) -> tuple[bytes, dict[str, str]]:
    out = {codec.ERROR_HEADER: exc.message}
    out[codec.ERROR_CODE_HEADER] = str(exc.code)
    if exc.param:
        out[codec.ERROR_PARAM_HEADER] = exc.param
    return b"", out


def raise_if_error(headers: dict[str, str] | None) -> None:
    """Turn micro error headers on a reply into the matching HaloError."""
    if headers and codec.ERROR_CODE_HEADER in headers:
        try:
            code = int(headers[codec.ERROR_CODE_HEADER])
        except ValueError:
            code = 500
        raise HaloError.from_code(code, headers.get(codec.ERROR_HEADER, "error"), param=headers.get(codec.ERROR_PARAM_HEADER))


async def run_job_handler(delivery: JobDelivery[Any], handler: Any, heartbeat_s: float) -> None:
    """Call ``handler(delivery)`` while heartbeating in_progress; ack on success, nak on error,
    term on BadRequest (a malformed job will never succeed)."""

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(heartbeat_s)
            with contextlib.suppress(Exception):
                await delivery.in_progress()

    hb = asyncio.create_task(heartbeat())
    try:
        with tracing.server_span("consume", delivery.subject, delivery.headers):
            await handler(delivery)
    except BadRequest as exc:
        log.warning("job on %s rejected: %s", delivery.subject, exc)
        await delivery.term()
    except asyncio.CancelledError:
        # Shutting down: leave the message unacked so another worker (or we, later) redeliver it.
        raise
    except Exception:
        log.exception("job handler on %s failed; will be redelivered", delivery.subject)
        with contextlib.suppress(Exception):
            await delivery.nak(delay_s=1.0)
    else:
        with contextlib.suppress(Exception):
            await delivery.ack()
    finally:
        hb.cancel()
