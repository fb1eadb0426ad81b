"""`halo-forge up` end to end: real nats-server, real service processes, real gateway over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from halo_common.natsproc import free_port
from halo_testing import wait_until

pytestmark = pytest.mark.integration


def cli(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HALO_HOME=str(home), HALO_GATEWAY_URL="")
    return subprocess.run([sys.executable, "-m", "halo_forge.main", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def services(gateway: str) -> dict[str, dict]:
    listing = httpx.get(f"{gateway}/api/v1/services", timeout=10).json()["services"]
    return {s["name"]: s for s in listing}


def test_up_survives_a_nats_restart_and_down_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HALO_GATEWAY_PORT", str(free_port()))
    first = cli(home, "up")
    assert first.returncode == 0, first.stderr + first.stdout
    state = json.loads((home / "stack.json").read_text())
    gateway = state["gateway_url"]
    pids = [state["nats"]["pid"], *(p["pid"] for p in state["services"].values())]
    try:
        started = set(state["services"])
        assert "gateway" in started
        before = services(gateway)
        assert {n for n, s in before.items() if (s["health"] or {}).get("status") == "ok"} >= started

        # `up` again reuses the running stack.
        again = cli(home, "up")
        assert again.returncode == 0 and "already running" in again.stdout
        assert json.loads((home / "stack.json").read_text())["nats"]["pid"] == state["nats"]["pid"]

        # Kill the nats-server: services notice, then reconnect when it comes back on the same port.
        psutil.Process(state["nats"]["pid"]).kill()
        wait_until(lambda: httpx.get(f"{gateway}/health", timeout=5).json()["nats"] == "disconnected", 60, 0.3,
                   "the gateway to see nats-server gone", ignore=(httpx.HTTPError,))
        restarted = cli(home, "up")
        assert restarted.returncode == 0, restarted.stderr
        assert "nats-server" in restarted.stdout and "gateway" not in restarted.stdout.split("started:")[1].split("\n")[0]
        new_state = json.loads((home / "stack.json").read_text())
        pids.append(new_state["nats"]["pid"])
        after = wait_until(lambda: (s := services(gateway)) and all(
            (s.get(n, {}).get("health") or {}).get("status") == "ok" for n in started) and s,
            60, 0.3, "every service healthy again", ignore=(httpx.HTTPError,))
        # Same instances answered again: they reconnected, they were not restarted.
        assert {n: after[n]["id"] for n in started} == {n: before[n]["id"] for n in started}

        status = cli(home, "status")
        assert status.returncode == 0 and "gateway" in status.stdout
    finally:
        down = cli(home, "down")
    assert down.returncode == 0, down.stderr
    assert not (home / "stack.json").exists()
    def none_alive() -> bool:
        return not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

    wait_until(none_alive, timeout=15, what="every process of the stack to exit after `down`")


def test_status_without_a_stack_is_one_clear_line(tmp_path: Path) -> None:
    env_port = free_port()
    env = dict(os.environ, HALO_HOME=str(tmp_path), HALO_GATEWAY_URL=f"http://127.0.0.1:{env_port}")
    proc = subprocess.run([sys.executable, "-m", "halo_forge.main", "status"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert "cannot reach the gateway" in proc.stderr and "halo-forge up" in proc.stderr
    assert "Traceback" not in proc.stderr
