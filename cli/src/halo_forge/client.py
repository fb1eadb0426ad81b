"""HTTP client for the gateway, used by every CLI command.

``GatewayClient.from_env()`` finds the gateway from ``HALO_GATEWAY_URL`` or the state file of a
stack started by ``halo-forge up``; error JSON from the gateway is raised as the matching
:class:`HaloError`, so the CLI prints the gateway's own message.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
from halo_common.errors import HaloError, Unavailable
from halo_common.paths import HaloPaths


def gateway_url_from_env() -> str:
    """``HALO_GATEWAY_URL``, else the running stack's gateway, else http://127.0.0.1:8420."""
    url = os.environ.get("HALO_GATEWAY_URL")
    if url:
        return url.rstrip("/")
    state = HaloPaths.from_env().state_file
    if state.exists():
        try:
            return json.loads(state.read_text())["gateway_url"].rstrip("/")
        except (ValueError, KeyError):
            pass
    return "http://127.0.0.1:8420"


class GatewayClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @classmethod
    def from_env(cls, timeout: float = 30.0) -> GatewayClient:
        return cls(gateway_url_from_env(), os.environ.get("HALO_TOKEN"), timeout)

    def _check(self, resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                exc = HaloError.from_code(int(err.get("code") or resp.status_code), err["message"], param=err.get("param"))
            except (ValueError, KeyError, TypeError):
                exc = HaloError.from_code(resp.status_code, resp.text[:500] or resp.reason_phrase)
            raise exc
        if not resp.content:
            return None
        return resp.json()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unavailable(
                f"cannot reach the gateway at {self.base_url} ({exc.__class__.__name__}); is the stack up? try `halo-forge up`"
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
            raise Unavailable(f"lost the gateway at {self.base_url}: {exc}") from None
