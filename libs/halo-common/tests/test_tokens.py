"""The token store: create/list/revoke/verify on a real file, hashes only, 0600, and the exposure rule."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from halo_common.errors import BadRequest, Conflict, Internal, NotFound
from halo_common.paths import HaloPaths
from halo_common.tokens import (
    TokenStore,
    bootstrap_exposed_token,
    check_token_value,
    ensure_local_cli_token,
    hash_token,
    is_loopback_host,
    read_local_cli_token,
)


def test_create_verify_list_revoke(tmp_path: Path) -> None:
    store = TokenStore(HaloPaths(tmp_path).tokens_file)
    assert store.list() == [] and not store.has_tokens()
    token, rec = store.create("laptop")
    assert token.startswith("hfk_") and len(token) == 47 and rec.hint == token[-4:]
    text = store.path.read_text()
    assert token not in text and hash_token(token) in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.verify(token) == rec and store.verify(token + "x") is None and store.verify("") is None
    # Another process (another TokenStore on the same file) sees the change at once.
    other = TokenStore(store.path)
    second, _ = other.create("ci")
    assert [r.name for r in store.list()] == ["laptop", "ci"] and store.verify(second) is not None
    assert store.list()[0].public() == {"name": "laptop", "created_at": rec.created_at, "hint": rec.hint}
    with pytest.raises(Conflict):
        store.create("laptop")
    with pytest.raises(BadRequest, match="invalid token name"):
        store.create("../x")
    assert other.revoke("laptop").name == "laptop"
    assert store.verify(token) is None and store.verify(second) is not None
    with pytest.raises(NotFound, match="known: ci"):
        store.revoke("laptop")


def test_a_damaged_store_fails_closed(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    store.path.write_text("{not json")
    with pytest.raises(Internal, match="damaged"):
        store.has_tokens()


def test_exposure_rule(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback_host(host), host
    for host in ("0.0.0.0", "::", "", "192.168.1.2", "forge.lan"):
        assert not is_loopback_host(host), host
    store = TokenStore(tmp_path / "tokens.json")
    assert bootstrap_exposed_token(store, "127.0.0.1", configured=False) is None
    assert bootstrap_exposed_token(store, "0.0.0.0", configured=True) is None
    assert not store.has_tokens()
    token = bootstrap_exposed_token(store, "0.0.0.0", configured=False)
    assert token is not None and store.verify(token).name == "operator"
    assert bootstrap_exposed_token(store, "0.0.0.0", configured=False) is None  # once


def test_local_cli_token_is_kept_and_replaced_when_revoked(tmp_path: Path) -> None:
    paths = HaloPaths(tmp_path)
    assert read_local_cli_token(paths) is None
    first = ensure_local_cli_token(paths)
    assert stat.S_IMODE(paths.cli_token_file.stat().st_mode) == 0o600
    assert ensure_local_cli_token(paths) == first == read_local_cli_token(paths)
    TokenStore.for_paths(paths).revoke("cli")
    second = ensure_local_cli_token(paths)
    assert second != first and TokenStore.for_paths(paths).verify(second).name == "cli"


def test_check_token_value_never_echoes_the_token() -> None:
    assert check_token_value("a" * 16) == "a" * 16
    for bad in ("short", "with space 0123456", "tab\tinside-0123456", "ünïcode-0123456789"):
        with pytest.raises(ValueError) as exc:
            check_token_value(bad)
        assert bad not in str(exc.value)
