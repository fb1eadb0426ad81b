"""NATS is no side door: the stack's nats-server requires the credentials generated on the first
``halo-forge up`` (HALO_HOME/auth/nats.json, 0600), a local process without them is refused, the
services get them through their environment (never argv), and a service given wrong ones stops
with one line naming the setting."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import psutil
import pytest
from halo_bus import NatsBus
from halo_common.natsproc import NatsCredentials, NatsProcess, free_port
from halo_common.paths import HaloPaths
from halo_common.settings import ConfigError
from nats.errors import Error as NatsError

pytestmark = pytest.mark.integration


async def _raw_connect(url: str, **auth: str) -> nats.NATS:
    """Plain nats-py, as any local process could do it (no retries)."""

    async def quiet(_e: Exception) -> None:  # nats-py's default logs a traceback per refusal
        pass

    return await nats.connect(url, allow_reconnect=False, connect_timeout=2, error_cb=quiet, **auth)


def test_credentials_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "nats.json"
    first = NatsCredentials.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert NatsCredentials.load_or_create(path) == first  # reused, not regenerated
    assert first.password not in repr(first) and len(first.password) >= 24
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a NATS credentials file"):
        NatsCredentials.load_or_create(path)


async def test_server_with_credentials_refuses_anonymous_clients(auth_nats_server: NatsProcess) -> None:
    creds = auth_nats_server.credentials
    assert creds is not None
    # The server got them from its 0600 config file, not from its command line.
    cmdline = " ".join(psutil.Process(auth_nats_server.pid).cmdline())
    assert creds.password not in cmdline and "-c" in cmdline
    conf = cmdline.split("-c ", 1)[1].split()[0]
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600  # noqa: ASYNC240 - a local file, once

    with pytest.raises(NatsError, match="Authorization Violation"):
        await _raw_connect(auth_nats_server.url)
    with pytest.raises(NatsError, match="Authorization Violation"):
        await _raw_connect(auth_nats_server.url, user=creds.user, password=creds.password + "x")
    nc = await _raw_connect(auth_nats_server.url, user=creds.user, password=creds.password)
    assert nc.is_connected
    await nc.close()

    # halo-bus: a refusal is a configuration error naming the settings (retrying cannot help) …
    with pytest.raises(ConfigError) as err:
        await NatsBus.connect(auth_nats_server.url, user=creds.user, password="wrong-password")
    assert "HALO_NATS_USER" in str(err.value) and "refused" in str(err.value) and "wrong-password" not in str(err.value)
    with pytest.raises(ConfigError, match="requires credentials"):
        await NatsBus.connect(auth_nats_server.url)
    # … and HALO_NATS_USER / HALO_NATS_PASSWORD from the environment are used when none are passed.
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("HALO_NATS_USER", creds.user)
        mp.setenv("HALO_NATS_PASSWORD", creds.password)
        bus = await NatsBus.connect(auth_nats_server.url, name="pytest-auth")
        assert bus.nc.is_connected
        await bus.close()
    finally:
        mp.undo()


@pytest.mark.parametrize("password", ["wrong-password-123", None])
def test_service_with_wrong_credentials_stops_with_one_line(auth_nats_server: NatsProcess, tmp_path: Path,
                                                            password: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HALO_NATS_")}
    env.update(HALO_HOME=str(tmp_path), HALO_NATS_URL=auth_nats_server.url, HALO_LOG_JSON="false")
    if password is not None:
        env.update(HALO_NATS_USER="halo", HALO_NATS_PASSWORD=password)
    proc = subprocess.run([sys.executable, "-m", "halo_registry"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("registry: invalid setting: HALO_NATS_USER / HALO_NATS_PASSWORD"), proc.stderr[-2000:]
    assert ("refused the credentials" if password else "requires credentials") in last
    assert "Traceback" not in proc.stderr
    if password:
        assert password not in proc.stderr + proc.stdout


def test_halo_forge_up_nats_requires_the_generated_credentials(tmp_path: Path) -> None:
    """A real `halo-forge up` (nats-server + gateway): anonymous clients are refused; a restarted
    nats-server keeps the same credentials, and the running gateway reconnects with them."""
    import asyncio

    from halo_forge import stack

    paths = HaloPaths(tmp_path / "home")
    state, _ = stack.up(paths, services=["gateway"], gateway_port=free_port(), timeout=120)
    try:
        creds_file = paths.nats_auth_file
        assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
        raw = json.loads(creds_file.read_text())
        password = raw["password"]

        async def probe() -> None:
            with pytest.raises(NatsError, match="Authorization Violation"):
                await _raw_connect(state.nats_url)
            nc = await _raw_connect(state.nats_url, user=raw["user"], password=password)
            await nc.close()

        asyncio.run(probe())
        # Not in anybody's argv, nor in the logs.
        assert state.nats is not None
        for info in [state.nats, *state.services.values()]:
            assert password not in " ".join(psutil.Process(info.pid).cmdline())
        for log in paths.logs_dir.glob("*.log"):
            assert password not in log.read_text(errors="replace"), log

        # Restart: same port, same credentials; the gateway reconnects by itself.
        psutil.Process(state.nats.pid).kill()
        state2, started = stack.up(paths, services=["gateway"], timeout=120)
        assert started == ["nats-server"] and json.loads(creds_file.read_text()) == raw
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            health = httpx.get(f"{state2.gateway_url}/health", timeout=5).json()
            if health.get("nats") == "connected":
                break
            time.sleep(0.3)
        assert health.get("nats") == "connected", health
        asyncio.run(probe())
    finally:
        stack.down(paths)
