"""A real stack for integration tests: a private nats-server plus chosen services as processes,
with the gateway on a free port and the CLI pointed at it.

Usage::

    stack = ProcessStack(tmp_root, ["halo_gateway", "halo_trainer_torch"], ready={"trainer-torch"})
    stack = ProcessStack(..., nats_auth=True)   # the nats-server requires a user/password (as `up`)
    r = stack.cli("train", "sft", ...)
    stack.close()
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import httpx
from halo_common.natsproc import NatsCredentials, NatsProcess, free_port

CLI = str(Path(sys.executable).parent / "halo-forge")


class ProcessStack:
    """``modules`` are run as ``python -m MODULE`` (the gateway among them); the constructor waits until
    every service in ``ready`` reports a health status in ``healthy`` through the gateway."""

    def __init__(self, root: Path, modules: Iterable[str], *, ready: set[str], env: Mapping[str, str] | None = None,
                 healthy: tuple[str, ...] = ("ok",), timeout_s: float = 120.0, nats_auth: bool = False) -> None:
        self.root, self.home = root, root / "home"
        self.nats = NatsProcess.start(root / "nats", log_file=root / "nats.log",
                                      credentials=NatsCredentials.generate() if nats_auth else None)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "HALO_HOME": str(self.home), **self.nats.client_env(), "HALO_LOG_JSON": "false",
                    "HALO_GATEWAY_PORT": str(port), "HALO_GATEWAY_URL": self.url, "OMP_NUM_THREADS": "1",
                    "COLUMNS": "200", **(env or {})}
        self.procs = [self._spawn(m) for m in modules]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                listing = httpx.get(f"{self.url}/api/v1/services", timeout=5).json()["services"]
                up = {s["name"] for s in listing if (s.get("health") or {}).get("status") in healthy}
                if ready <= up:
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            for p in self.procs:
                if p.poll() is not None:
                    self.close()
                    raise AssertionError(f"a service exited during start:\n{self.logs()[-3000:]}")
            time.sleep(0.3)
        self.close()
        raise AssertionError(f"stack did not come up in {timeout_s:.0f}s:\n{self.logs()[-3000:]}")

    def _spawn(self, module: str) -> subprocess.Popen[bytes]:
        with (self.root / "logs.txt").open("ab") as out:
            return subprocess.Popen([sys.executable, "-m", module], stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)

    def logs(self) -> str:
        path = self.root / "logs.txt"
        return path.read_text(errors="replace") if path.exists() else ""

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``halo-forge ARGS`` against this stack."""
        return subprocess.run([CLI, *args], capture_output=True, text=True, env=self.env, timeout=timeout)

    def close(self) -> None:
        """SIGTERM every service (SIGKILL after 20 s), then stop the nats-server."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.nats.stop()
