"""What the gateway lets in: the Host allow-list, bearer tokens, browser origins and request content types.

One ASGI middleware (:class:`SecurityMiddleware`) runs these checks, in this order, before any route:

1. **Host allow-list** (no DNS rebinding): the ``Host`` header must name this gateway — a loopback name
   (``localhost``, 127.0.0.0/8, ``::1``), the bind address, a name in ``HALO_GATEWAY_ALLOWED_HOSTS``
   (``*`` accepts any) and, when the gateway is exposed, this machine's host name or any IP literal
   (a rebinding attack always arrives with the attacker's *domain name*). Else 400.
2. **Token**: required on every route but the public ones (``/health``, the dashboard's static files and
   its sign-in route) when the gateway is exposed (bound to anything but loopback — decided by the bind
   setting, never by the peer's address), when ``HALO_GATEWAY_TOKEN`` is set, or when the token store holds
   tokens. Else 401 with ``WWW-Authenticate: Bearer``. A browser signed in through ``/api/v1/auth/session``
   sends its session cookie instead (:mod:`halo_gateway.core.sessions`); such a request that changes state
   must carry the session's CSRF secret in ``X-Halo-CSRF``, else 403.
3. **Origin**: a state-changing request (POST/PUT/PATCH/DELETE) that a browser marked with an ``Origin``
   must come from this gateway's own origin or one in ``HALO_GATEWAY_CORS_ORIGINS``. Else 403.
4. **Content type**: a state-changing request with a body must send a type its operation declares in the
   OpenAPI document (``requestBody.content``; no declared body means JSON) — JSON routes
   ``application/json``, the bundle import ``application/gzip``… Anything else (``text/plain``, the form
   types a cross-site form can send) is a 415.

Usage: ``app.add_middleware(SecurityMiddleware, security=GatewaySecurity(settings), api=app)``.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import socket
import sys
from typing import IO

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from halo_common.errors import BadRequest, Forbidden, HaloError
from halo_common.tokens import TokenStore, bootstrap_exposed_token, hash_token, is_loopback_host
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from halo_gateway.core.sessions import (
    CSRF_COOKIE,
    CSRF_HEADER,
    SESSION_COOKIE,
    Session,
    SessionStore,
    SignInThrottle,
    csrf_matches,
)
from halo_gateway.settings import GatewaySettings

#: Reachable without a token: probes, the dashboard's page and static files (no data in them), and sign-in.
PUBLIC_PATHS = frozenset({"/health", "/", "/favicon.svg", "/api/v1/auth/session"})
PUBLIC_PREFIXES = ("/assets/",)
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPES = ("application/json",)
_WILDCARD_BINDS = ("0.0.0.0", "::", "")


class Unauthorized(HaloError):
    """No token, or one the gateway does not know."""

    code = 401
    type = "authentication_error"


class UnsupportedMediaType(HaloError):
    """A body whose content type the route does not declare."""

    code = 415
    type = "unsupported_media_type_error"


def _host_name(header: str) -> str:
    """``Host`` header -> bare lower-case name: ``[::1]:8420`` -> ``::1``, ``Example.com:80`` -> ``example.com``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class GatewaySecurity:
    """The policy for one gateway, built from its settings. ``auth_required()`` is re-evaluated on every
    request, so tokens created or revoked with ``halo-forge tokens`` apply at once."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.host = settings.host
        self.exposed = not is_loopback_host(settings.host)
        self.store = TokenStore.for_paths(settings.paths)
        self._configured = hash_token(settings.token) if settings.token else None
        self.cors_origins = frozenset(o.rstrip("/") for o in settings.cors_origins)
        names = {h.lower().strip("[]") for h in settings.allowed_hosts}
        bind = settings.host.lower().strip("[]")
        if bind not in _WILDCARD_BINDS:
            names.add(bind)
        if self.exposed:
            names.add(socket.gethostname().lower())
            names.add(socket.gethostname().lower().split(".")[0])
        self.allowed_hosts = frozenset(names)
        self.sessions = SessionStore(settings.session_ttl_s)
        self.throttle = SignInThrottle()

    # -- tokens ------------------------------------------------------------------------------------------
    def bootstrap(self, out: IO[str] | None = None) -> str | None:
        """Exposed with no token anywhere: create one, print it once to ``out`` (stderr), return it."""
        token = bootstrap_exposed_token(self.store, self.host, configured=self._configured is not None)
        if token is not None:
            print(f"halo-gateway: bound to {self.host} (not loopback) with no token configured, so every route but "
                  f"/health needs one. Created API token 'operator' — shown once; only its SHA-256 is kept in "
                  f"{self.store.path}:\n\n    {token}\n\nSend it as 'Authorization: Bearer <token>' (the CLI reads "
                  "HALO_TOKEN). Manage tokens with `halo-forge tokens create|list|revoke`.",
                  file=out or sys.stderr, flush=True)
        return token

    def auth_required(self) -> bool:
        return self.exposed or self._configured is not None or self.store.has_tokens()

    def authenticate(self, authorization: str | None) -> bool:
        """True when ``Authorization: Bearer <token>`` holds the configured token or a stored one."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        digest = hash_token(token)
        configured = self._configured is not None and hmac.compare_digest(digest, self._configured)
        stored = self.store.verify(token) is not None
        return configured or stored

    def verify_token(self, token: str) -> tuple[str, str] | None:
        """``(digest, name)`` when ``token`` is the configured one (name ``configured``) or a stored one."""
        digest = hash_token(token)
        if self._configured is not None and hmac.compare_digest(digest, self._configured):
            return digest, "configured"
        record = self.store.verify(token)
        return (digest, record.name) if record is not None else None

    def digest_valid(self, digest: str) -> bool:
        """True while a token with this digest is still accepted (a revoked one is not)."""
        if self._configured is not None and hmac.compare_digest(digest, self._configured):
            return True
        return any(hmac.compare_digest(r.sha256, digest) for r in self.store.list())

    def session_of(self, cookies: dict[str, str]) -> Session | None:
        """The live session named by the ``halo_session`` cookie; one whose token was revoked is ended."""
        session = self.sessions.get(cookies.get(SESSION_COOKIE))
        if session is not None and not self.digest_valid(session.token_digest):
            self.sessions.end(session.id)
            return None
        return session

    # -- browsers ----------------------------------------------------------------------------------------
    def host_allowed(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        name = _host_name(host_header)
        if "*" in self.allowed_hosts or name in self.allowed_hosts or is_loopback_host(name):
            return True
        return self.exposed and _is_ip(name)

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        """A browser's ``Origin`` is fine when it is this gateway's own origin or a configured CORS origin."""
        origin = origin.rstrip("/")
        if origin in self.cors_origins:
            return True
        netloc = origin.split("://", 1)[1] if "://" in origin else None
        return netloc is not None and netloc.lower() == host_header.strip().lower()

    # -- the checks --------------------------------------------------------------------------------------
    def check(self, scope: Scope, body_types: BodyTypes) -> HaloError | None:
        """The first refused check for this request, or None when it may go on."""
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not self.host_allowed(host):
            return BadRequest(f"Host {host!r} is not an accepted name for this gateway; add it to "
                              "HALO_GATEWAY_ALLOWED_HOSTS if it is yours", param="Host")
        method = scope["method"]
        if not is_public(scope["path"]) and self.auth_required() and not self.authenticate(
                headers.get("authorization")):
            cookies = cookie_parser(headers.get("cookie", ""))
            session = self.session_of(cookies)
            if session is None:
                return Unauthorized("missing or invalid bearer token: send 'Authorization: Bearer <token>' (CLI: "
                                    "set HALO_TOKEN; create one with `halo-forge tokens create`; a browser signs in "
                                    "on the dashboard's Connection page)", param="Authorization")
            if method in STATE_CHANGING and not csrf_matches(session, headers.get(CSRF_HEADER),
                                                             cookies.get(CSRF_COOKIE)):
                return Forbidden(f"{method} with a session cookie needs the X-Halo-CSRF header (the value of the "
                                 f"{CSRF_COOKIE} cookie)", param="X-Halo-CSRF")
        if method not in STATE_CHANGING:
            return None
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, host):
            return Forbidden(f"cross-origin {method} from {origin!r} refused; allow it with HALO_GATEWAY_CORS_ORIGINS",
                             param="Origin")
        if not _has_body(headers):
            return None
        allowed = body_types.of(method, scope["path"])
        if allowed is None:
            return None  # no such route: routing answers 404/405
        given = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if given not in allowed:
            return UnsupportedMediaType(f"{method} {scope['path']} takes {' or '.join(allowed)}, not "
                                        f"{given or 'a body without Content-Type'}", param="Content-Type")
        return None


def is_public(path: str) -> bool:
    """True for the routes anyone may reach (still behind the Host check): see :data:`PUBLIC_PATHS`."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _has_body(headers: Headers) -> bool:
    if "transfer-encoding" in headers:
        return True
    try:
        return int(headers.get("content-length", "0")) > 0
    except ValueError:
        return True


class BodyTypes:
    """Which media types each operation takes as a body, read from the app's OpenAPI document (the one
    place routes declare it): the operation's ``requestBody`` content types, else JSON."""

    def __init__(self, api: FastAPI) -> None:
        self.api = api
        self._ops: list[tuple[re.Pattern[str], int, str, tuple[str, ...]]] | None = None

    def _build(self) -> list[tuple[re.Pattern[str], int, str, tuple[str, ...]]]:
        ops = []
        for path, item in self.api.openapi().get("paths", {}).items():
            pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")
            literal = len([p for p in path.split("/") if p and not p.startswith("{")])
            for method, op in item.items():
                content = (op.get("requestBody") or {}).get("content") if isinstance(op, dict) else None
                ops.append((pattern, literal, method.upper(), tuple(content) if content else JSON_TYPES))
        return ops

    def of(self, method: str, path: str) -> tuple[str, ...] | None:
        """The types for ``method path``, or None when no operation matches (routing then answers 404/405)."""
        if self._ops is None:
            self._ops = self._build()
        found = [(lit, types) for pat, lit, m, types in self._ops if m == method and pat.match(path)]
        # A literal segment beats a parameter: POST /runs/import is not POST /runs/{run_id}.
        return max(found)[1] if found else None


class SecurityMiddleware:
    """Pure ASGI middleware running :meth:`GatewaySecurity.check` on every HTTP request (streams pass
    through untouched)."""

    def __init__(self, app: ASGIApp, security: GatewaySecurity, api: FastAPI) -> None:
        self.app, self.security, self.body_types = app, security, BodyTypes(api)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            refused = self.security.check(scope, self.body_types)
        except HaloError as exc:  # e.g. a damaged token store: fail closed, say why
            refused = exc
        if refused is None:
            await self.app(scope, receive, send)
            return
        headers = {"WWW-Authenticate": "Bearer"} if refused.code == 401 else None
        await JSONResponse(refused.to_dict(), status_code=refused.code, headers=headers)(scope, receive, send)
