"""Prefixed, time-sortable identifiers: ``run-01JD3…``, ``job-…``, ``ckpt-…``.

The body is a 26-character Crockford base32 ULID-like string (48-bit millisecond timestamp +
80 random bits), so ids sort by creation time as plain strings.
"""

from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID_RE = re.compile(r"^([a-z][a-z0-9]*)-([0-9A-HJKMNP-TV-Z]{26})$")


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(prefix: str) -> str:
    """Return a new id such as ``run-01JD3K5Q7M4Z8X2C6V9B1N3T5R``; ``prefix`` is lowercase letters."""
    if not re.fullmatch(r"[a-z][a-z0-9]*", prefix):
        raise ValueError(f"id prefix must be lowercase alphanumeric, got {prefix!r}")
    ms = int(time.time() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}-{_b32(ms, 10)}{_b32(rand, 16)}"


def id_prefix(value: str) -> str:
    """Return the prefix of an id (``"run"`` for ``run-…``); raises ValueError for a malformed id."""
    m = _ID_RE.match(value)
    if not m:
        raise ValueError(f"not a Halo id: {value!r}")
    return m.group(1)
