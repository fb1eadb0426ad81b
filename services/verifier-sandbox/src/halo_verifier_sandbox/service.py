"""The verifier-sandbox service: ``halo.rpc.verifier-sandbox.{verify,verify-batch,inventory}``.

``python -m halo_verifier_sandbox`` runs it (settings: :class:`VerifierSandboxSettings`). In tests::

    svc = VerifierSandbox(VerifierSandboxSettings(home=tmp), InMemoryBus())
    await svc.start()

At start it detects the sandbox (failing closed: without a mechanism, and without
``HALO_VERIFIER_SANDBOX_ALLOW_HOST=1``, sandboxed verifiers answer ``unavailable`` and health is
degraded while the in-process ones — bleu, json_schema… — keep working), loads plugins from
HALO_HOME/verifiers and the ``halo_forge.verifiers`` entry points, and serves.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

from halo_bus import Bus
from halo_runtime import Service
from halo_schemas.verifiers import InventoryRequest, VerifyBatchRequest, VerifyRequest
from halo_telemetry import Telemetry
from halo_verifiers.cache import ResultCache
from halo_verifiers.engine import VerifierEngine
from halo_verifiers.registry import REGISTRY
from prometheus_client import CollectorRegistry

from halo_verifier_sandbox import __version__, handlers
from halo_verifier_sandbox.metrics import VerifierMetrics
from halo_verifier_sandbox.settings import VerifierSandboxSettings

log = logging.getLogger("halo_verifier_sandbox")


class VerifierSandbox(Service):
    name = "verifier-sandbox"
    version = __version__
    description = "Graduated-reward verifiers run in a sandbox"
    settings_cls = VerifierSandboxSettings

    def __init__(self, settings: VerifierSandboxSettings, bus: Bus, telemetry: Telemetry | None = None) -> None:
        super().__init__(settings, bus, telemetry)
        self.metrics_registry = telemetry.registry if telemetry else CollectorRegistry()
        self.metrics = VerifierMetrics(self.metrics_registry)
        self.engine: VerifierEngine
        self.max_reply_bytes = settings.max_reply_bytes

    @property
    def vsettings(self) -> VerifierSandboxSettings:
        return self.settings  # type: ignore[return-value]

    def build_engine(self) -> VerifierEngine:
        s = self.vsettings
        cache = None
        if s.cache_entries:
            path: Path | None = s.paths.home / "cache" / "verifier-results.sqlite" if s.cache_persist else None
            cache = ResultCache(s.cache_entries, path)
        engine = VerifierEngine.create(
            workers=s.workers or None, mechanism=s.mechanism, allow_host=s.allow_host,
            cache=cache if cache is not None else False,
            uid_base=s.uid_base, uid_count=max(s.uid_count, s.workers or 0), base_dir=s.base_dir,
            hide=_hidden_paths(s), home=s.paths.home, allow_remote_code=s.allow_remote_code,
        )
        engine.observer = self.metrics.observe
        return engine

    def load_plugins(self) -> None:
        s = self.vsettings
        if s.plugins:
            REGISTRY.load_plugins(s.paths.verifiers_dir)

    async def setup(self) -> None:
        loop = asyncio.get_running_loop()
        self.engine = await loop.run_in_executor(None, self.build_engine)
        await loop.run_in_executor(None, self.load_plugins)
        sb = self.engine.runtime.sandbox
        self.metrics.sandbox_available.labels(sb.mechanism.value if sb else "none").set(1 if sb else 0)
        if sb:
            log.info("sandbox: %s (%s); %d workers", sb.mechanism.value, ", ".join(sb.isolation), self.engine.workers)
        await self.endpoint("verify", functools.partial(handlers.verify, self), VerifyRequest)
        await self.endpoint("verify-batch", functools.partial(handlers.verify_batch, self), VerifyBatchRequest)
        await self.endpoint("inventory", functools.partial(handlers.inventory, self), InventoryRequest)

    def checks(self) -> dict[str, str]:
        rt = getattr(getattr(self, "engine", None), "runtime", None)
        if rt is None:
            return {"sandbox": "starting"}
        return {"sandbox": "ok" if rt.sandbox is not None else f"unavailable: {rt.sandbox_problem}"}

    async def drain(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            await asyncio.get_running_loop().run_in_executor(None, engine.close)


def _hidden_paths(s: VerifierSandboxSettings) -> list[str]:
    from halo_verifiers.sandbox import DEFAULT_HIDE

    return [*DEFAULT_HIDE, str(s.paths.home)]
