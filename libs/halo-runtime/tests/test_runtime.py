"""Service runtime: health, metrics counting, bad settings stop a real process with a clear line."""

from __future__ import annotations

import os
import subprocess
import sys

from halo_bus import Bus, subjects
from halo_common.errors import HaloError
from halo_common.settings import HaloSettings
from halo_runtime import Service
from halo_schemas.health import HealthRequest, ServiceHealth


class Flaky(Service):
    name = "eval"

    def checks(self) -> dict[str, str]:
        return {"disk": "full"}


async def test_health_reports_checks_and_degrades(bus: Bus) -> None:
    svc = Flaky(HaloSettings(), bus)
    await svc.start()
    h = await bus.request(subjects.rpc("eval", "health"), HealthRequest(), ServiceHealth)
    assert h.status == "degraded" and h.checks == {"nats": "ok", "disk": "full"}
    assert h.service == "eval" and h.instance_id == svc.registration.id
    await svc.stop()


async def test_endpoint_calls_are_counted(bus: Bus) -> None:
    svc = Flaky(HaloSettings(), bus)
    await svc.start()
    for _ in range(3):
        await bus.request(subjects.rpc("eval", "health"), HealthRequest(), ServiceHealth)
    value = svc.rpc_requests.labels("health", "ok")._value.get()
    assert value == 3
    await svc.stop()


async def test_stopped_service_no_longer_answers(bus: Bus) -> None:
    svc = Flaky(HaloSettings(), bus)
    await svc.start()
    await svc.stop()
    try:
        await bus.request(subjects.rpc("eval", "health"), HealthRequest(), ServiceHealth, timeout=0.5)
    except HaloError as exc:
        assert exc.code == 503
    else:
        raise AssertionError("a stopped service answered")


def test_malformed_setting_stops_a_service_at_start_naming_it() -> None:
    env = dict(os.environ, HALO_NATS_URL="not a url", HALO_GATEWAY_PORT="99999")
    proc = subprocess.run([sys.executable, "-m", "halo_gateway"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "HALO_NATS_URL" in proc.stderr and "HALO_GATEWAY_PORT" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_drains_and_exits_cleanly(nats_server, tmp_path) -> None:  # noqa: ANN001
    import signal
    import time

    from halo_common.natsproc import free_port, wait_for_port

    port = free_port()
    env = dict(os.environ, HALO_NATS_URL=nats_server.url, HALO_HOME=str(tmp_path), HALO_GATEWAY_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "halo_gateway"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_port("127.0.0.1", port, 60), "gateway did not start"
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert rc == 0, err
    assert "gateway stopping" in err and "Traceback" not in err
