"""HTTP client for the gateway, used by every CLI command.

``GatewayClient.from_env()`` finds the gateway with :func:`find_gateway` — ``HALO_GATEWAY_URL``, else
the local stack started by ``halo-forge up`` (HALO_HOME/stack.json, only while its gateway process is
alive), else ``HALO_GATEWAY_HOST``/``HALO_GATEWAY_PORT`` when set — and never guesses a port: with none of
these it says that no local stack is running. The token it sends is ``HALO_TOKEN``, else, for the local
stack only, the stack's own ``cli`` token (HALO_HOME/auth/cli-token, created by ``up`` in token mode).
Error JSON from the gateway is raised as the matching :class:`HaloError`, so the CLI prints the gateway's
own message; errors name the gateway they came from.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from halo_common.errors import BadRequest, HaloError, Unavailable
from halo_common.paths import HaloPaths
from halo_common.tokens import check_token_value, read_local_cli_token


@dataclass(frozen=True)
class GatewayTarget:
    """Which gateway the CLI talks to, and why (``source`` is shown to the user)."""

    url: str
    source: str
    local: bool  # the gateway of this HALO_HOME's stack: its cli token may be sent there


def _local_stack_url(paths: HaloPaths) -> tuple[str | None, str | None]:
    """(gateway URL of the running local stack, or None; why not, when a state file exists but is stale)."""
    from halo_forge.stack import StackState  # the stack module imports psutil: only load it when needed

    try:
        state = StackState.load(paths.state_file)
    except (ValueError, KeyError, TypeError, OSError):
        return None, f"its state file {paths.state_file} is unreadable"
    if state is None:
        return None, None
    gateway = state.services.get("gateway")
    if gateway is None or not gateway.alive():
        return None, f"the stack recorded in {paths.state_file} has no live gateway process"
    return state.gateway_url.rstrip("/"), None


def find_gateway(paths: HaloPaths | None = None) -> GatewayTarget:
    """The gateway to use: ``HALO_GATEWAY_URL``, else the running local stack, else ``HALO_GATEWAY_HOST`` /
    ``HALO_GATEWAY_PORT`` when set; otherwise :class:`Unavailable` saying that no local stack is running."""
    paths = paths or HaloPaths.from_env()
    local_url, stale = _local_stack_url(paths)
    url = (os.environ.get("HALO_GATEWAY_URL") or "").strip().rstrip("/")
    if url:
        return GatewayTarget(url, "HALO_GATEWAY_URL", local=url == local_url)
    if local_url:
        return GatewayTarget(local_url, f"the local stack in {paths.home}", local=True)
    host, port = os.environ.get("HALO_GATEWAY_HOST", "").strip(), os.environ.get("HALO_GATEWAY_PORT", "").strip()
    if host or port:
        # A wildcard bind address is reached through loopback; an IPv6 literal needs brackets in a URL.
        host = "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return GatewayTarget(f"http://{host}:{port or 8420}", "HALO_GATEWAY_HOST/HALO_GATEWAY_PORT", local=False)
    why = f" ({stale})" if stale else ""
    raise Unavailable(f"no local stack is running (HALO_HOME={paths.home}){why}; start one with `halo-forge up` "
                      "or set HALO_GATEWAY_URL")


def gateway_url_from_env() -> str:
    """The URL :func:`find_gateway` picks."""
    return find_gateway().url


def token_for(target: GatewayTarget, paths: HaloPaths | None = None) -> str | None:
    """``HALO_TOKEN``, else the local stack's cli token when ``target`` is the local stack (a local secret is
    never sent to another gateway)."""
    token = (os.environ.get("HALO_TOKEN") or "").strip()
    if token:
        try:
            return check_token_value(token)
        except ValueError as exc:  # the message never holds the token
            raise BadRequest(f"HALO_TOKEN: {exc}", param="HALO_TOKEN") from None
    return read_local_cli_token(paths or HaloPaths.from_env()) if target.local else None


class GatewayClient:
    """``GatewayClient.from_env().get("/api/v1/jobs")``; ``.post``, ``.delete``, ``.stream_lines``."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0, source: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.token = token  # for other clients of the same gateway (the openai SDK on /v1)
        self.source = source
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @classmethod
    def from_env(cls, timeout: float = 30.0) -> GatewayClient:
        paths = HaloPaths.from_env()
        target = find_gateway(paths)
        return cls(target.url, token_for(target, paths), timeout, source=target.source)

    def describe(self) -> str:
        """``http://127.0.0.1:8420 (from HALO_GATEWAY_URL)``."""
        return f"{self.base_url} (from {self.source})" if self.source else self.base_url

    def _check(self, resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                code, message, param = int(err.get("code") or resp.status_code), str(err["message"]), err.get("param")
            except (ValueError, KeyError, TypeError):
                code, message, param = resp.status_code, resp.text[:500] or resp.reason_phrase, None
            if code in (401, 403):  # say which gateway refused: the fix depends on it
                message = f"the gateway at {self.describe()} refused the request: {message}"
            raise HaloError.from_code(code, message, param=param)
        if not resp.content:
            return None
        return resp.json()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unavailable(
                f"cannot reach the gateway at {self.describe()} ({exc.__class__.__name__}); is the stack up? "
                "try `halo-forge up`"
            ) from None
        return self._check(resp)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params=params)

    def stream_lines(self, path: str, **params: Any) -> Iterator[str]:
        """Iterate server-sent lines (``data: …``) of a streaming endpoint."""
        try:
            with self.http.stream("GET", path, params=params, timeout=None) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._check(resp)
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        yield line[6:]
        except httpx.TransportError as exc:
            raise Unavailable(f"lost the gateway at {self.describe()}: {exc}") from None
