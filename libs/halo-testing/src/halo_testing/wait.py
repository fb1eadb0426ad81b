"""Waiting in tests for something that happens elsewhere (another task, thread or process): one polling helper,
sync and async, that fails naming what it waited for.

Usage::

    from halo_testing import await_until, wait_until

    status = wait_until(lambda: client.get(url).json(), what="the gateway to answer", ignore=(httpx.HTTPError,))
    await await_until(lambda: len(seen) == 2, what="both jobs to be handled")
    rec = await await_until(fetch_row, timeout=10, what="the run in the registry")   # fetch_row may be async

The predicate's first truthy value is returned. On timeout an ``AssertionError`` says what was awaited, for
how long, and the last value (or exception) seen. Exceptions of the ``ignore`` types count as "not yet";
any other exception fails at once.

For absence ("X never happens"), do not sleep and look: wait for the event that proves X can no longer
happen (the queue is empty, the process exited, the consumer's pending count is 0), then assert.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["await_until", "wait_until"]


def _fail(what: str, timeout: float, last: Any) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "the condition",
               *, ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a truthy value (returned); raise
    ``AssertionError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except ignore as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise _fail(what, timeout, last)
        time.sleep(interval)


async def await_until(predicate: Callable[[], T | Awaitable[T]], timeout: float = 30.0, interval: float = 0.02,
                      what: str = "the condition", *, ignore: tuple[type[BaseException], ...] = ()) -> T:
    """The asyncio form of :func:`wait_until`: ``predicate`` may be a plain function or return an awaitable
    (an ``async def``); the loop keeps running between polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            last = value
            if value:
                return value  # type: ignore[return-value]
        except ignore as exc:
            last = exc
        if loop.time() >= deadline:
            raise _fail(what, timeout, last)
        await asyncio.sleep(interval)
