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


async def _sent_by(client_type: type[Client], headers: dict[str, str] | None) -> bytes:
    """The protocol bytes ``client_type._send_publish`` hands to the socket writer."""
    client = client_type()
    sent: list[bytes] = []

    async def record(cmd: bytes, priority: bool = False) -> None:
        sent.append(cmd)

    client._send_command = record  # type: ignore[method-assign]
    client._flush_queue = None
    await client._send_publish("halo.rpc.x.y", "_INBOX.r", b'{"a":1}', 7, headers)
    assert len(sent) == 1
    return sent[0]


HEADER_DICTS = [
    None,
    {},
    {"Halo-Schema": "halo.test.ping.v1", "Halo-Correlation-Id": "0123456789abcdef"},
    {"  Padded ": "  v  ", "": "skipped", "Multi": "a\r\nb\nc"},  # stripped, empty name, newlines
    {"Unicode": "caf\u00e9 \u2603", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
]


@pytest.mark.parametrize("headers", HEADER_DICTS)
async def test_same_bytes_on_the_wire_as_nats_py(headers: dict[str, str] | None) -> None:
    assert await _sent_by(_Client, headers) == await _sent_by(Client, headers)


@pytest.mark.parametrize("bad_name", ["Bad Name", "Colon:Name", "Ctl\x01"])
async def test_invalid_header_name_refused_like_nats_py(bad_name: str) -> None:
    from nats.errors import BadHeaderError

    for client_type in (Client, _Client):
        with pytest.raises(BadHeaderError):
            await _sent_by(client_type, {bad_name: "x"})
