"""Browser sessions: sign in once with a token, then a cookie; CSRF protection; slowed-down failed sign-ins.

A browser cannot attach ``Authorization: Bearer`` to an ``EventSource`` or a download link, so the dashboard
signs in once (``POST /api/v1/auth/session`` with a token) and gets two cookies:

* ``halo_session`` — a random server-side session id (256 bits), ``HttpOnly; SameSite=Strict; Path=/``. The
  gateway keeps the session (the digest of the token it was opened with, its CSRF secret, its expiry) in
  memory: a restart signs every browser out, a revoked token ends its sessions at their next request, and a
  session expires ``ttl_s`` after sign-in.
* ``halo_csrf`` — the session's CSRF secret, readable by the page's own script (not ``HttpOnly``). A request
  authenticated by the session cookie that changes state (POST/PUT/PATCH/DELETE) must repeat it in the
  ``X-Halo-CSRF`` header (double submit, and bound to the session: the header must equal the secret the
  server holds, not only the cookie). Another site can make a browser *send* cookies but cannot *read* them,
  so it cannot forge the header; SameSite=Strict and the Origin check are further layers.

Bearer-token requests (the CLI, scripts) need no CSRF header: a browser never adds that header by itself.

Repeated failed sign-ins from one client are slowed (:class:`SignInThrottle`): the first
``free_failures`` cost nothing, then each failure doubles the wait (1 s, 2 s, 4 s … up to ``max_delay_s``)
during which that client's sign-ins are answered 429 with ``Retry-After``, right or wrong token alike.

Usage::

    store = SessionStore(ttl_s=12 * 3600)
    session = store.create(token_digest)            # after the token was verified
    store.get(cookie_value)                          # -> Session, or None when unknown / expired
    csrf_matches(session, header, cookie)            # on a cookie-authenticated POST
    store.end(cookie_value)                          # sign-out
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from halo_common.errors import HaloError

SESSION_COOKIE = "halo_session"
CSRF_COOKIE = "halo_csrf"
CSRF_HEADER = "x-halo-csrf"
#: Sessions kept at most; past it the oldest is dropped (a sign-in flood cannot exhaust memory).
MAX_SESSIONS = 10_000
#: Clients whose failures are remembered at most (oldest forgotten first).
MAX_CLIENTS = 10_000


class TooManyRequests(HaloError):
    """Sign-ins from this client are paused after repeated failures; ``retry_after_s`` says for how long."""

    code = 429
    type = "rate_limit_error"

    def __init__(self, message: str, retry_after_s: float, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


@dataclass
class Session:
    """One signed-in browser. ``token_digest`` is the SHA-256 of the token it signed in with (checked again on
    every request, so revoking the token ends the session)."""

    id: str
    csrf: str
    token_digest: str
    created_at: float
    expires_at: float
    label: str = ""


class SessionStore:
    """In-memory sessions with an absolute lifetime. ``clock`` is ``time.monotonic`` unless a test gives one."""

    def __init__(self, ttl_s: float = 12 * 3600, *, clock: Callable[[], float] = time.monotonic,
                 max_sessions: int = MAX_SESSIONS) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.ttl_s, self.clock, self.max_sessions = ttl_s, clock, max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, token_digest: str, label: str = "") -> Session:
        """A new session for a verified token (its digest); ``label`` names the token, for display only."""
        now = self.clock()
        self._expire(now)
        session = Session(id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), token_digest=token_digest,
                          created_at=now, expires_at=now + self.ttl_s, label=label)
        self._sessions[session.id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (unknown, malformed or expired — an expired one is dropped)."""
        if not session_id or len(session_id) > 128:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if self.clock() >= session.expires_at:
            del self._sessions[session_id]
            return None
        return session

    def end(self, session_id: str | None) -> bool:
        """Sign out: forget the session. True when there was one."""
        return self._sessions.pop(session_id or "", None) is not None

    def end_for_token(self, token_digest: str) -> int:
        """End every session opened with this token (after it was revoked); returns how many."""
        doomed = [sid for sid, s in self._sessions.items() if s.token_digest == token_digest]
        for sid in doomed:
            del self._sessions[sid]
        return len(doomed)

    def __len__(self) -> int:
        self._expire(self.clock())
        return len(self._sessions)

    def _expire(self, now: float) -> None:
        # Sessions are created in order with one lifetime, so the expired ones are at the front.
        while self._sessions:
            first = next(iter(self._sessions.values()))
            if first.expires_at > now:
                break
            self._sessions.popitem(last=False)


def csrf_matches(session: Session, header: str | None, cookie: str | None) -> bool:
    """True when the ``X-Halo-CSRF`` header equals both the CSRF cookie and the session's own secret
    (constant-time comparisons)."""
    if not header or not cookie:
        return False
    return hmac.compare_digest(header, cookie) and hmac.compare_digest(header, session.csrf)


@dataclass
class _Failures:
    count: int = 0
    blocked_until: float = 0.0
    last: float = field(default=0.0)


class SignInThrottle:
    """Per-client backoff for failed sign-ins: ``free_failures`` free, then ``base_delay_s`` doubling up to
    ``max_delay_s``. Call :meth:`check` before verifying a token, then :meth:`failed` or :meth:`succeeded`.
    A client's record is forgotten after ``forget_after_s`` without failures."""

    def __init__(self, *, free_failures: int = 3, base_delay_s: float = 1.0, max_delay_s: float = 60.0,
                 forget_after_s: float = 900.0, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.free_failures, self.base_delay_s, self.max_delay_s = free_failures, base_delay_s, max_delay_s
        self.forget_after_s, self.clock, self.max_clients = forget_after_s, clock, max_clients
        self._clients: OrderedDict[str, _Failures] = OrderedDict()

    def check(self, client: str) -> None:
        """Raise :class:`TooManyRequests` while ``client`` is paused."""
        record = self._record(client, create=False)
        if record is None:
            return
        wait = record.blocked_until - self.clock()
        if wait > 0:
            raise TooManyRequests(f"too many failed sign-ins from this client: try again in {wait:.0f} s",
                                  retry_after_s=wait, param="token")

    def failed(self, client: str) -> float:
        """Record a failed sign-in; returns the pause (seconds) it starts, 0 while failures are still free."""
        record = self._record(client, create=True)
        assert record is not None
        now = self.clock()
        record.count += 1
        record.last = now
        over = record.count - self.free_failures
        delay = 0.0 if over <= 0 else min(self.base_delay_s * 2 ** (over - 1), self.max_delay_s)
        record.blocked_until = now + delay
        return delay

    def succeeded(self, client: str) -> None:
        """A good sign-in clears the client's failures."""
        self._clients.pop(client, None)

    def failures(self, client: str) -> int:
        record = self._record(client, create=False)
        return record.count if record else 0

    def _record(self, client: str, *, create: bool) -> _Failures | None:
        now = self.clock()
        record = self._clients.get(client)
        if record is not None and now - record.last > self.forget_after_s and now >= record.blocked_until:
            del self._clients[client]
            record = None
        if record is None and create:
            record = self._clients[client] = _Failures(last=now)
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        elif record is not None:
            self._clients.move_to_end(client)
        return record


class SignInRefused(HaloError):
    """The token given to sign in is not one the gateway accepts."""

    code = 401
    type = "authentication_error"


def sign_in(sessions: SessionStore, throttle: SignInThrottle, verify: Callable[[str], tuple[str, str] | None],
            token: str, client: str) -> Session:
    """Open a session for ``token`` from ``client`` (its address): 429 while the client is paused, 401 for a
    token ``verify`` (-> ``(digest, name)`` or None) does not accept — which also counts a failure."""
    throttle.check(client)
    found = verify(token.strip()) if token.strip() else None
    if found is None:
        pause = throttle.failed(client)
        extra = f"; sign-ins from this client are paused for {pause:.0f} s" if pause else ""
        raise SignInRefused(f"this token is not accepted by the gateway{extra}", param="token")
    throttle.succeeded(client)
    digest, name = found
    return sessions.create(digest, label=name)
