"""Prefixed, time-sortable identifiers: ``run-01JD3…``, ``job-…``, ``ckpt-…``.

The body is a 26-character Crockford base32 ULID-like string (48-bit millisecond timestamp +
80 random bits), so ids sort by creation time as plain strings.
"""

from __future__ import annotations

import os
import re
import time

from halo_common.errors import BadRequest

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


# ---- validating ids that come from outside ------------------------------------------------
#: The one pattern every id taken from a user, a URL or a bundle must match (run ids, job ids…):
#: 1-128 ASCII letters, digits, ``_`` or ``-``, starting with a letter or digit. It makes an id
#: safe as a path component (no separator, no ``.``/``..``, no NUL), a NATS subject token and a
#: KV key. ``halo_schemas.registry.RunId`` carries the same pattern (halo-schemas has no
#: dependencies; a test keeps the two equal).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
ID_MAX_LEN = 128
_VALID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # used with fullmatch: "$" would accept a final "\n"


class InvalidId(BadRequest, ValueError):
    """An id that does not match :data:`ID_PATTERN`: a 400 (``BadRequest``) naming the field, and
    a ``ValueError`` for code that only knows about that."""


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a string matching :data:`ID_PATTERN`."""
    return isinstance(value, str) and _VALID_ID.fullmatch(value) is not None


def _problem(value: object) -> str:
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value:
        return "is empty"
    if len(value) > ID_MAX_LEN:
        return f"is {len(value)} characters long (at most {ID_MAX_LEN})"
    if value[0] in "_-":
        return f"starts with {value[0]!r} (must start with a letter or digit)"
    bad = next(c for c in value if not (c.isascii() and (c.isalnum() or c in "_-")))
    return f"contains {bad!r} (only ASCII letters, digits, '_' and '-' are allowed)"


def validate_id(value: str, name: str = "id") -> str:
    """Return ``value`` when it is a valid id (:data:`ID_PATTERN`), else raise :class:`InvalidId`
    (a 400 with ``param=name``) saying what is wrong: ``validate_id(run_id, "run_id")``."""
    if is_valid_id(value):
        return value
    shown = repr(value[:64]) + "…" if isinstance(value, str) and len(value) > 64 else repr(value)
    raise InvalidId(f"invalid {name} {shown}: it {_problem(value)}", param=name)
