"""Browser sign-in and token management (the dashboard's Connection page).

* ``GET    /api/v1/auth/session``   -> :class:`AuthState` (public: whether a token is needed, whether signed in)
* ``POST   /api/v1/auth/session``   ``{"token": "hfk_…"}`` -> :class:`AuthState` + the session and CSRF cookies
  (401 for a wrong token; 429 with ``Retry-After`` after repeated failures from one client)
* ``DELETE /api/v1/auth/session``   sign out: ends the session, clears the cookies
* ``GET    /api/v1/auth/tokens``    -> the stored tokens (name, creation time, last 4 characters)
* ``POST   /api/v1/auth/tokens``    ``{"name": "laptop"}`` -> the new token, shown once
* ``DELETE /api/v1/auth/tokens/{name}`` revoke (its browser sessions end too)

The session and CSRF logic is :mod:`halo_gateway.core.sessions`; who may call is decided by the security
middleware before these routes run.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from halo_common.errors import Forbidden
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import cookie_parser

from halo_gateway.core.security import GatewaySecurity
from halo_gateway.core.sessions import (
    CSRF_COOKIE,
    CSRF_HEADER,
    SESSION_COOKIE,
    Session,
    TooManyRequests,
    csrf_matches,
    sign_in,
)

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class SignInRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=512, description="An API token (hfk_… or HALO_GATEWAY_TOKEN).")


class AuthState(BaseModel):
    auth_required: bool = Field(description="Whether this gateway needs a token (exposed, or tokens exist).")
    exposed: bool = Field(description="Bound to a non-loopback address.")
    signed_in: bool = Field(description="This browser holds a live session.")
    token_name: str | None = Field(default=None, description="Name of the token the session was opened with.")
    expires_in_s: float | None = Field(default=None, description="Seconds until the session expires.")


class TokenInfo(BaseModel):
    name: str = Field(description="Token name.")
    created_at: str = Field(description="UTC creation time.")
    hint: str = Field(description="Last 4 characters, to tell tokens apart.")


class TokenList(BaseModel):
    tokens: list[TokenInfo] = Field(description="Stored tokens, oldest first (HALO_GATEWAY_TOKEN is not listed).")


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, description="Unique name: letters, digits, '_', '.', '-'.")


class TokenCreated(TokenInfo):
    token: str = Field(description="The token itself: shown this once, only its SHA-256 is kept.")


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
SIGN_IN_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"description": "The token is not accepted.", "content": _ERROR},
    429: {"description": "Too many failed sign-ins from this client; see Retry-After.", "content": _ERROR}}


def _security(request: Request) -> GatewaySecurity:
    return request.app.state.security


def _state(security: GatewaySecurity, session: Session | None) -> AuthState:
    now = security.sessions.clock()
    return AuthState(auth_required=security.auth_required(), exposed=security.exposed, signed_in=session is not None,
                     token_name=session.label if session else None,
                     expires_in_s=round(session.expires_at - now, 1) if session else None)


@router.get("/session", response_model=AuthState)
async def session_state(request: Request) -> AuthState:
    security = _security(request)
    return _state(security, security.session_of(request.cookies))


@router.post("/session", response_model=AuthState, responses=SIGN_IN_ERRORS)
async def open_session(body: SignInRequest, request: Request, response: Response) -> AuthState | JSONResponse:
    """Sign in with a token: sets ``halo_session`` (HttpOnly, SameSite=Strict) and ``halo_csrf`` (repeat it in
    ``X-Halo-CSRF`` on state-changing requests)."""
    security = _security(request)
    client = request.client.host if request.client else "unknown"
    try:
        session = sign_in(security.sessions, security.throttle, security.verify_token, body.token, client)
    except TooManyRequests as exc:
        return JSONResponse(exc.to_dict(), status_code=429, headers={"Retry-After": str(int(exc.retry_after_s) + 1)})
    secure = request.url.scheme == "https"
    max_age = int(security.sessions.ttl_s)
    response.set_cookie(SESSION_COOKIE, session.id, max_age=max_age, httponly=True, samesite="strict", secure=secure)
    response.set_cookie(CSRF_COOKIE, session.csrf, max_age=max_age, httponly=False, samesite="strict", secure=secure)
    return _state(security, session)


@router.delete("/session", response_model=AuthState)
async def close_session(request: Request, response: Response) -> AuthState:
    """Sign out. A live session is ended only with its CSRF header (another site cannot sign you out)."""
    security = _security(request)
    cookies = cookie_parser(request.headers.get("cookie", ""))
    session = security.sessions.get(cookies.get(SESSION_COOKIE))
    if session is not None:
        if not csrf_matches(session, request.headers.get(CSRF_HEADER), cookies.get(CSRF_COOKIE)):
            raise Forbidden("signing out needs the X-Halo-CSRF header (the value of the halo_csrf cookie)",
                            param="X-Halo-CSRF")
        security.sessions.end(session.id)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
    response.delete_cookie(CSRF_COOKIE, samesite="strict")
    return _state(security, None)


@router.get("/tokens", response_model=TokenList)
async def list_tokens(request: Request) -> TokenList:
    return TokenList(tokens=[TokenInfo(**r.public()) for r in _security(request).store.list()])


@router.post("/tokens", response_model=TokenCreated)
async def create_token(body: TokenCreate, request: Request) -> TokenCreated:
    """Create a token (the gateway then requires tokens, if it did not already)."""
    token, record = _security(request).store.create(body.name)
    return TokenCreated(token=token, **record.public())


@router.delete("/tokens/{name}", response_model=TokenInfo)
async def revoke_token(name: str, request: Request) -> TokenInfo:
    """Revoke a token: it stops working at once, and browser sessions opened with it end."""
    security = _security(request)
    record = security.store.revoke(name)
    security.sessions.end_for_token(record.sha256)
    return TokenInfo(**record.public())
