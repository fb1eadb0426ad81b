"""API tokens: the gateway's token store and the exposure rule.

A token is ``hfk_`` + 256 random bits (``secrets.token_urlsafe(32)``). The store
(``HALO_HOME/auth/tokens.json``, mode 0600, in a 0700 directory) keeps, per token, a unique name,
the SHA-256 of the token, its creation time and a hint (its last 4 characters) — never the token
itself. A plaintext token is shown once, when it is created.

Usage::

    store = TokenStore(HaloPaths.from_env().tokens_file)
    token, record = store.create("laptop")     # show ``token`` to the user once
    store.verify(token)                        # -> the TokenRecord, or None
    store.list(); store.revoke("laptop")

The exposure rule (:func:`is_loopback_host`, :func:`bootstrap_exposed_token`): a gateway bound to
anything but loopback always requires a token; when none is configured, the first start creates one.
The local CLI has its own token (``cli``), whose plaintext lives in ``HALO_HOME/auth/cli-token``
(0600) for this machine's user only: see :func:`ensure_local_cli_token`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from halo_common.errors import BadRequest, Conflict, Internal, NotFound
from halo_common.paths import HaloPaths

TOKEN_PREFIX = "hfk_"
#: Shortest operator-given token (``HALO_GATEWAY_TOKEN``) accepted.
MIN_TOKEN_LENGTH = 16
CLI_TOKEN_NAME = "cli"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Printable ASCII without spaces: anything else cannot travel in an Authorization header as-is.
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")


def generate_token() -> str:
    """A new random token: ``hfk_`` + 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Hex SHA-256 of ``token`` (tokens are high-entropy, so a plain hash is enough to store them)."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_token_value(token: str) -> str:
    """Return ``token`` if it is usable as a bearer token, else raise ``ValueError`` with a message that
    never contains the token itself."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"a token needs at least {MIN_TOKEN_LENGTH} characters; this one has {len(token)}")
    if not _TOKEN_CHARS.match(token):
        raise ValueError("a token may hold only printable ASCII characters, without spaces")
    return token


def is_loopback_host(host: str) -> bool:
    """True when a bind address only accepts connections from this machine: ``localhost``, 127.0.0.0/8, ::1.
    Anything else (0.0.0.0, ::, a LAN address, a host name) counts as exposed."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class TokenRecord:
    """One stored token. ``hint`` is the token's last 4 characters, to tell tokens apart in a listing."""

    name: str
    sha256: str
    created_at: str
    hint: str

    def public(self) -> dict[str, str]:
        """The fields safe to show (everything but the hash)."""
        return {"name": self.name, "created_at": self.created_at, "hint": self.hint}


class TokenStore:
    """The token store file. Reads are cached and refreshed when the file changes, so a running gateway
    sees tokens created or revoked by ``halo-forge tokens`` at once; writes are atomic and serialised
    with a lock file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._records: list[TokenRecord] = []

    @classmethod
    def for_paths(cls, paths: HaloPaths) -> TokenStore:
        return cls(paths.tokens_file)

    # -- reading -------------------------------------------------------------------------------------
    def list(self) -> list[TokenRecord]:
        """Every stored token, oldest first."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._records = None, []
            return []
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._records, self._stamp = self._read(), stamp
        return list(self._records)

    def _read(self) -> list[TokenRecord]:
        try:
            raw = json.loads(self.path.read_text())
            return [TokenRecord(**{k: str(t[k]) for k in ("name", "sha256", "created_at", "hint")})
                    for t in raw["tokens"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError) as exc:
            # Fail closed: a damaged store must not silently turn authentication off.
            raise Internal(f"token store {self.path} is damaged ({exc.__class__.__name__}); fix or remove it "
                           "and create tokens again with `halo-forge tokens create`") from None

    def has_tokens(self) -> bool:
        return bool(self.list())

    def verify(self, token: str) -> TokenRecord | None:
        """The record matching ``token``, or None. Every record is compared in constant time."""
        digest = hash_token(token)
        found = None
        for rec in self.list():
            if hmac.compare_digest(rec.sha256, digest):
                found = rec
        return found

    # -- writing -------------------------------------------------------------------------------------
    def create(self, name: str) -> tuple[str, TokenRecord]:
        """Create a token named ``name`` (unique; letters, digits, ``_.-``). Returns the plaintext — show it
        once, it is not stored — and its record."""
        if not _NAME.match(name):
            raise BadRequest(f"invalid token name {name!r}: use 1-64 letters, digits, '_', '.', '-'", param="name")
        token = generate_token()
        rec = TokenRecord(name=name, sha256=hash_token(token), hint=token[-4:],
                          created_at=datetime.now(UTC).isoformat(timespec="seconds"))
        with self._locked() as records:
            if any(r.name == name for r in records):
                raise Conflict(f"a token named {name!r} exists; revoke it first or pick another name", param="name")
            records.append(rec)
        return token, rec

    def revoke(self, name: str) -> TokenRecord:
        """Remove the token named ``name``; it stops working at once."""
        with self._locked() as records:
            match = [r for r in records if r.name == name]
            if not match:
                known = ", ".join(r.name for r in records) or "none"
                raise NotFound(f"no token named {name!r}; known: {known}", param="name")
            records.remove(match[0])
        return match[0]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[TokenRecord]]:
        """Yield the current records under an exclusive lock; write them back atomically (0600) after."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path.parent, 0o700)
        lock_fd = os.open(self.path.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            records = self._read()
            yield records
            body = json.dumps({"version": 1, "tokens": [asdict(r) for r in records]}, indent=2)
            _write_private(self.path, body)
            self._stamp = None
        finally:
            os.close(lock_fd)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (the file is never readable by others, not even
    for a moment)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def bootstrap_exposed_token(store: TokenStore, host: str, configured: bool, name: str = "operator") -> str | None:
    """The exposure rule: bound to a non-loopback ``host`` with no configured token and an empty store,
    create a token named ``name`` and return its plaintext (the caller shows it once to the operator).
    Returns None when nothing was needed."""
    if is_loopback_host(host) or configured or store.has_tokens():
        return None
    token, _ = store.create(name)
    return token


def read_local_cli_token(paths: HaloPaths) -> str | None:
    """The local CLI's token (``HALO_HOME/auth/cli-token``), or None when there is none."""
    try:
        return paths.cli_token_file.read_text().strip() or None
    except (FileNotFoundError, PermissionError):
        return None


def ensure_local_cli_token(paths: HaloPaths) -> str:
    """Keep (or create) the ``cli`` token the local CLI uses with the local stack: its hash in the store, its
    plaintext in ``HALO_HOME/auth/cli-token`` (0600). A stale file or a revoked token is replaced."""
    store = TokenStore.for_paths(paths)
    token = read_local_cli_token(paths)
    if token is not None:
        rec = store.verify(token)
        if rec is not None and rec.name == CLI_TOKEN_NAME:
            return token
    with contextlib.suppress(NotFound):
        store.revoke(CLI_TOKEN_NAME)
    token, _ = store.create(CLI_TOKEN_NAME)
    _write_private(paths.cli_token_file, token + "\n")
    return token
