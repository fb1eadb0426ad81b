"""halo-bus's faster NATS header parser must give exactly what nats-py's own parser gives."""

from __future__ import annotations

import random

import pytest
from halo_bus.nats_bus import _Client
from nats.aio.client import Client

CASES = [
    b"Halo-Schema: halo.test.ping.v1\r\nHalo-Correlation-Id: 0123456789abcdef\r\n\r\n",
    b"",
    b"\r\n\r\n",
    b"NoColon\r\nA: 1\r\n",
    b"A:1\r\nB:\t2 \r\nC:   \r\n",  # no space after the colon, tabs, empty value
    b"Dup: 1\r\nDup: 2\r\n",  # the last one wins, as in nats-py
    b"Bad Name: x\r\nGood: y\r\n",  # whitespace inside a name: skipped
    b"  Padded  : v\r\n",  # whitespace around a name: stripped
    b"Caf\xc3\xa9: x\r\nOk: y\r\n",  # non-ASCII name: skipped
    "Unicode: caf\u00e9 \u2603\r\n".encode(),
    b"Broken: \xff\xfe\r\n",  # invalid UTF-8 value: replaced, not raised
    b"Ctrl\x1fName: x\r\n",  # \x1f is whitespace to str.isspace
    b"Colons: a:b:c\r\n",
    b": empty name\r\n",
    b"Bare\nLF: x\r\n",
]


@pytest.mark.parametrize("raw", CASES)
def test_same_headers_as_nats_py(raw: bytes) -> None:
    assert _Client._parse_header_lines(raw) == Client._parse_header_lines(raw)


def test_same_headers_as_nats_py_on_random_blocks() -> None:
    rng = random.Random(20240601)
    alphabet = b"ab:-_ \t\r\n\x1c\x85\xc3\xa9\xff0"
    for _ in range(3000):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert _Client._parse_header_lines(raw) == Client._parse_header_lines(raw), raw
