"""Service runtime.

Usage::

    class Registry(Service):
        name = "registry"
        version = __version__
        settings_cls = RegistrySettings

        async def setup(self) -> None:
            await self.endpoint("runs-search", handlers.search, RunsSearch)
            await self.track(await self.bus.subscribe_events(...))

    if __name__ == "__main__":
        Registry.main()

``main()`` loads settings (an invalid one exits 2 with a line naming the variable), sets up
telemetry, connects to NATS (waiting for it if it is not up yet), registers the service with NATS
micro (discovery, ``$SRV.PING/INFO/STATS``), serves ``halo.rpc.<svc>.health`` and ``/metrics``,
then waits for SIGTERM/SIGINT and drains: stops taking work, lets in-flight work finish up to
``drain_timeout_s``, closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from typing import Any, ClassVar

from halo_bus import Bus, NatsBus, Subscription, subjects
from halo_bus.api import Handler, ServiceRegistration
from halo_common.backend import detect_backend
from halo_common.errors import Unavailable
from halo_common.settings import ConfigError, HaloSettings, load_settings
from halo_schemas.health import HealthRequest, HealthStatus, ServiceHealth
from halo_telemetry import Telemetry
from halo_telemetry import setup as telemetry_setup
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel

log = logging.getLogger("halo_runtime")


class Service:
    """Base class for a Halo service. Override :meth:`setup`, optionally :meth:`checks` and :meth:`drain`."""

    name: ClassVar[str]
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = ""
    settings_cls: ClassVar[type[HaloSettings]] = HaloSettings

    def __init__(self, settings: HaloSettings, bus: Bus, telemetry: Telemetry | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.telemetry = telemetry
        self.started = time.monotonic()
        self.set_up = False  # True once setup() has registered every endpoint and consumer (health: starting before)
        self.registration: ServiceRegistration | None = None
        self._subs: list[Subscription] = []
        self._stopping = asyncio.Event()
        # A private registry when there is no telemetry (tests), so instances never collide.
        registry = telemetry.registry if telemetry else CollectorRegistry()
        self.rpc_requests = Counter("halo_rpc_requests_total", "RPC requests handled", ["verb", "outcome"], registry=registry)
        self.rpc_duration = Histogram("halo_rpc_duration_seconds", "RPC handling time", ["verb"], registry=registry)

    # ---- to override -----------------------------------------------------------------
    async def setup(self) -> None:
        """Register endpoints (:meth:`endpoint`) and consumers (:meth:`track`)."""

    def checks(self) -> dict[str, str]:
        """Named health sub-checks: value ``"ok"`` or a short problem description."""
        return {}

    async def drain(self) -> None:
        """Finish in-flight work after consumers stopped (bounded by drain_timeout_s)."""

    # ---- helpers -----------------------------------------------------------------------
    async def endpoint(self, verb: str, handler: Handler, request_type: type[BaseModel]) -> str:
        """Serve ``halo.rpc.<name>.<verb>`` with ``handler`` (counted and timed in /metrics)."""
        assert self.registration is not None, "endpoint() is for setup()"
        subject = subjects.rpc(self.name, verb)

        # Children bound once: a labels() lookup per request takes a lock and hashes the labels.
        ok, failed = self.rpc_requests.labels(verb, "ok"), self.rpc_requests.labels(verb, "error")
        duration = self.rpc_duration.labels(verb)

        async def timed(req: Any) -> BaseModel:
            start = time.perf_counter()
            counter = ok
            try:
                return await handler(req)
            except Exception:
                counter = failed
                raise
            finally:
                counter.inc()
                duration.observe(time.perf_counter() - start)

        await self.registration.add_endpoint(subject, timed, request_type)
        return subject

    async def track(self, sub: Subscription) -> Subscription:
        """Remember a subscription so shutdown stops it before draining."""
        self._subs.append(sub)
        return sub

    async def health(self, _req: HealthRequest) -> ServiceHealth:
        checks = {"nats": "ok" if self.bus.connected else "disconnected", **self.checks()}
        bad = [k for k, v in checks.items() if v != "ok"]
        status = HealthStatus.OK if not bad else HealthStatus.DEGRADED
        if not self.set_up:
            # Health answers from the start (so a slow setup is visible), but "ready" means every endpoint
            # and consumer is registered: a client that waits for ok must not race setup().
            checks["setup"], status = "starting", HealthStatus.STARTING
        return ServiceHealth(
            service=self.name,
            instance_id=self.registration.id if self.registration else "?",
            version=self.version,
            status=status,
            uptime_s=time.monotonic() - self.started,
            backend=str(detect_backend()),
            metrics_url=self.telemetry.metrics_url if self.telemetry else None,
            checks=checks,
        )

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        metadata = {"backend": str(detect_backend())}
        if self.telemetry and self.telemetry.metrics_url:
            metadata["metrics_url"] = self.telemetry.metrics_url
        self.registration = await self.bus.add_service(self.name, self.version, self.description or self.name, metadata)
        await self.endpoint("health", self.health, HealthRequest)
        await self.setup()
        self.set_up = True
        log.info("%s %s ready", self.name, self.version)

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Stop taking work, drain, deregister."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.stop()
        try:
            await asyncio.wait_for(self.drain(), self.settings.drain_timeout_s)
        except TimeoutError:
            log.warning("drain did not finish in %.1fs", self.settings.drain_timeout_s)
        if self.registration:
            await self.registration.stop()

    async def serve_forever(self) -> None:
        await self.start()
        await self._stopping.wait()
        log.info("%s stopping", self.name)
        await self.stop()

    @classmethod
    def main(cls, argv: list[str] | None = None) -> None:
        """Entry point for ``python -m halo_<svc>``.

        ``--check-settings`` only validates the settings from the environment and prints them as JSON (secrets
        shown as ``"<set>"``), exit 0 — or one line naming the bad variable, exit 2. ``halo-forge up`` runs it
        before starting anything, without importing the service's package into the CLI.
        """
        argv = sys.argv[1:] if argv is None else argv
        try:
            settings = load_settings(cls.settings_cls)
        except ConfigError as exc:
            print(f"{cls.name}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        if "--check-settings" in argv:
            print(json.dumps(redacted(settings)))
            raise SystemExit(0)
        try:
            code = asyncio.run(run_service(cls, settings))
        except ConfigError as exc:  # found only at run time, e.g. NATS refused HALO_NATS_USER/PASSWORD
            print(f"{cls.name}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        raise SystemExit(code)


def redacted(settings: HaloSettings) -> dict[str, Any]:
    """``settings`` as JSON-able values, each secret (token, password, secret) replaced by ``"<set>"``."""
    out = settings.model_dump(mode="json")
    for key, value in out.items():
        if value is not None and any(word in key.lower() for word in ("token", "secret", "password")):
            out[key] = "<set>"
    return out


async def connect_with_retry(settings: HaloSettings, name: str, give_up_s: float | None = None) -> NatsBus:
    """Connect to NATS, waiting (with backoff) while it is not up yet."""
    deadline = None if give_up_s is None else time.monotonic() + give_up_s
    delay = 0.2
    while True:
        try:
            return await NatsBus.connect(settings.nats_url, name=name, **settings.nats_auth())
        except Unavailable as exc:
            if deadline is not None and time.monotonic() > deadline:
                raise
            log.warning("%s; retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)


async def run_service(cls: type[Service], settings: HaloSettings) -> int:
    """Run ``cls`` until SIGTERM/SIGINT. Returns the process exit code."""
    telemetry = telemetry_setup(
        cls.name, level=settings.log_level, json_logs=settings.log_json,
        metrics_port=settings.metrics_port, metrics_host=settings.metrics_host,
    )
    bus = await connect_with_retry(settings, cls.name)
    service = cls(settings, bus, telemetry)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop)
    try:
        await service.serve_forever()
    finally:
        await bus.close()
        telemetry.shutdown()
    return 0
