"""Gateway security with real processes: an exposed gateway (bound to 0.0.0.0) creates a token and guards
every route but /health; `halo-forge up` and the CLI work in token mode; an invalid token stops `up` before
anything starts without ever printing it; the CLI never talks to a port it was not told about."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from halo_common.natsproc import NatsProcess, free_port

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "halo_forge.main"]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The test's environment without any HALO_ setting of the outer shell, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HALO_")}
    return {**env, "HALO_HOME": str(home), "HALO_LOG_JSON": "false", "COLUMNS": "200", **extra}


def cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def wait_health(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"gateway not up in {timeout}s:\n{log.read_text()[-3000:]}")


def all_files_text(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.slow  # real processes: two gateway starts / a real `up`
def test_exposed_gateway_process_creates_a_token_and_guards_every_route(tmp_path: Path) -> None:
    home = tmp_path / "home"
    nats = NatsProcess.start(tmp_path / "nats", log_file=tmp_path / "nats.log")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = clean_env(home, HALO_NATS_URL=nats.url, HALO_GATEWAY_HOST="0.0.0.0", HALO_GATEWAY_PORT=str(port))
    procs: list[subprocess.Popen[bytes]] = []

    def start(n: int) -> Path:
        err = tmp_path / f"gateway-{n}.stderr"
        with open(err, "wb") as e, open(tmp_path / f"gateway-{n}.stdout", "wb") as o:
            procs.append(subprocess.Popen([sys.executable, "-m", "halo_gateway"], env=env, stdout=o, stderr=e))
        wait_health(url, procs[-1], err)
        return err

    def stop() -> None:
        procs[-1].send_signal(signal.SIGTERM)
        procs[-1].wait(30)

    try:
        printed = start(1).read_text()
        tokens = [w for w in printed.split() if w.startswith("hfk_")]
        assert len(tokens) == 1, printed  # printed once, to stderr
        token = tokens[0]
        store = home / "auth" / "tokens.json"
        assert stat.S_IMODE(store.stat().st_mode) == 0o600
        assert token not in store.read_text() and hashlib.sha256(token.encode()).hexdigest() in store.read_text()

        # The test connects from 127.0.0.1: the bind address decides, not the peer.
        assert httpx.get(f"{url}/health").status_code == 200
        for path in ("/api/v1/services", "/api/v1/jobs", "/api/v1/runs", "/api/v1/runs/run-x/events", "/metrics",
                     "/docs", "/redoc", "/openapi.json", "/v1/models"):
            r = httpx.get(f"{url}{path}", timeout=10)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", path
        assert httpx.post(f"{url}/api/v1/jobs/sft", json={}).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{url}/api/v1/services", headers=auth, timeout=10).status_code == 200
        assert httpx.get(f"{url}/openapi.json", headers=auth).json()["components"]["securitySchemes"]
        # DNS rebinding: a browser that reached us through evil.example's name sends that Host.
        assert httpx.get(f"{url}/api/v1/jobs", headers={**auth, "Host": "evil.example"}).status_code == 400

        # Restarted, it keeps the stored token and prints nothing new.
        stop()
        again = start(2).read_text()
        assert "hfk_" not in again
        assert httpx.get(f"{url}/api/v1/jobs", headers=auth).status_code == 200
        assert httpx.get(f"{url}/api/v1/jobs").status_code == 401
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
        nats.stop()


@pytest.mark.slow  # real processes: two gateway starts / a real `up`
def test_up_and_the_cli_in_token_mode(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = str(free_port())

    # An invalid token stops `up` before anything starts, and its value is never shown.
    bad = "TooShortSecret7"
    r = cli(clean_env(home, HALO_GATEWAY_TOKEN=bad, HALO_GATEWAY_PORT=port), "up", "--only", "registry,gateway")
    assert r.returncode == 1 and "HALO_GATEWAY_TOKEN" in r.stderr and "nothing was started" in r.stderr
    assert bad not in r.stdout + r.stderr + all_files_text(home)
    assert not (home / "stack.json").exists() and not list((home / "logs").glob("*.log"))

    secret = "operator-secret-" + os.urandom(8).hex()
    up_env = clean_env(home, HALO_GATEWAY_TOKEN=secret, HALO_GATEWAY_PORT=port)
    r = cli(up_env, "up", "--only", "registry,gateway")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        url = f"http://127.0.0.1:{port}"
        # A later shell without the operator's token: the CLI uses the stack's own cli token.
        env = clean_env(home)
        status = cli(env, "status")
        assert status.returncode == 0, status.stderr
        assert f"gateway: {url} (from the local stack in {home})" in status.stdout and "registry" in status.stdout
        runs = cli(env, "runs", "list")
        assert runs.returncode == 0, runs.stderr
        listing = cli(env, "tokens", "list")
        assert listing.returncode == 0 and "cli" in listing.stdout

        assert httpx.get(f"{url}/api/v1/services").status_code == 401
        assert httpx.get(f"{url}/api/v1/services", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        cli_token = (home / "auth" / "cli-token").read_text().strip()
        assert stat.S_IMODE((home / "auth" / "cli-token").stat().st_mode) == 0o600
        # A wrong HALO_TOKEN wins over the local token and is refused, naming the gateway.
        wrong = cli(clean_env(home, HALO_TOKEN="hfk_" + "A" * 43), "runs", "list")
        assert wrong.returncode == 1 and f"gateway at {url}" in wrong.stderr and "401" not in wrong.stdout

        # A new token works at once; revoked, it stops working.
        created = cli(env, "tokens", "create", "laptop")
        assert created.returncode == 0 and created.stdout.strip().startswith("hfk_")
        laptop = {"Authorization": f"Bearer {created.stdout.strip()}"}
        assert httpx.get(f"{url}/api/v1/jobs", headers=laptop).status_code == 200
        assert cli(env, "tokens", "revoke", "laptop").returncode == 0
        assert httpx.get(f"{url}/api/v1/jobs", headers=laptop).status_code == 401

        # No plaintext token in any log or stored file but the cli token's own.
        logs = all_files_text(home / "logs")
        for value in (secret, cli_token, created.stdout.strip()):
            assert value not in logs
        assert secret not in (home / "auth" / "tokens.json").read_text()
        assert cli_token not in (home / "auth" / "tokens.json").read_text()
    finally:
        down = cli(clean_env(home), "down")
    assert down.returncode == 0, down.stderr


def test_the_cli_names_its_gateway_and_never_guesses_one(tmp_path: Path) -> None:
    r = cli(clean_env(tmp_path), "status", timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"no local stack is running (HALO_HOME={tmp_path})" in r.stderr and "HALO_GATEWAY_URL" in r.stderr
    port = free_port()
    r = cli(clean_env(tmp_path, HALO_GATEWAY_URL=f"http://127.0.0.1:{port}"), "status", timeout=60)
    assert r.returncode == 1 and f"http://127.0.0.1:{port} (from HALO_GATEWAY_URL)" in r.stderr
