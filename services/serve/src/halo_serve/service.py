"""The serve service: an OpenAI-compatible HTTP API (its own port) plus bus control.

On start it builds the model catalog from settings (``HALO_SERVE_MODELS`` / ``HALO_SERVE_ADAPTERS``),
starts the engine thread and the HTTP server (uvicorn, in this process and event loop), and serves
``halo.rpc.serve.load|unload|list|info|convert-formats|cancel``, and runs the convert / merge-bake /
merge-combine jobs (``halo.job.serve.<type>``, see :func:`halo_serve.handlers.run_job`). Model loads/unloads are published as
``halo.evt.serve.model.<id>.<action>`` events. The gateway finds the HTTP API through the ``info``
verb (and ``health`` details carry the same URL).

Run it with ``python -m halo_serve``; in tests::

    svc = Serve(ServeSettings(port=0, models=[f"tiny={tiny_model_dir}"]), InMemoryBus())
    await svc.start()          # svc.url -> http://127.0.0.1:<port>
    ...
    await svc.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
from typing import Any

import uvicorn
from halo_bus import Bus, subjects
from halo_runtime import Service
from halo_runtime.jobs import JobLifecycle
from halo_schemas.convert import ConvertFormatsRequest
from halo_schemas.jobs import JobEnvelope, JobRef
from halo_schemas.serve import (
    ServeInfoRequest,
    ServeListRequest,
    ServeLoadRequest,
    ServeModelEvent,
    ServeUnloadRequest,
)
from halo_telemetry import Telemetry
from prometheus_client import CollectorRegistry

from halo_serve import __version__, handlers
from halo_serve.api import AppState, create_app
from halo_serve.core import control
from halo_serve.core.engine import Engine, EngineConfig
from halo_serve.core.models import ModelCatalog
from halo_serve.metrics import ServeMetrics
from halo_serve.settings import ServeSettings

log = logging.getLogger("halo_serve")


def event_token(model_id: str) -> str:
    """A NATS-safe subject token for a model id (ids may hold '/', ':' or '.')."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", model_id)[:48]
    return f"{safe}-{hashlib.sha1(model_id.encode()).hexdigest()[:8]}" if safe != model_id else safe


class Serve(Service):
    name = "serve"
    version = __version__
    description = "OpenAI-compatible serving of base models, adapters, GGUF and MLX files"
    settings_cls = ServeSettings

    def __init__(self, settings: ServeSettings, bus: Bus, telemetry: Telemetry | None = None) -> None:
        super().__init__(settings, bus, telemetry)
        self.settings: ServeSettings = settings
        self.registry = telemetry.registry if telemetry else CollectorRegistry()
        self.metrics = ServeMetrics(self.registry)
        forced = None if settings.backend == "auto" else settings.backend
        self.catalog = ModelCatalog(settings.paths, forced_backend=forced)
        opts: dict[str, dict[str, Any]] = {"transformers": {"device": settings.device, "dtype": settings.dtype}}
        self.engine = Engine(self.catalog, EngineConfig(
            max_batch_size=settings.max_batch_size, max_queue=settings.max_queue,
            stream_interval_s=settings.stream_interval_ms / 1000,
            memory_budget_bytes=int(settings.memory_budget_gb * 1e9), max_loaded_models=settings.max_loaded_models,
            backend_options=opts), observer=self.metrics)
        self.metrics.bind(self.engine.stats)
        self.server: uvicorn.Server | None = None
        self._server_task: asyncio.Task[None] | None = None
        self._events: set[asyncio.Task[None]] = set()
        self.url = ""
        self.backends: list[str] = []
        # convert / merge jobs running here (job id -> lifecycle, for cancel) and the one-at-a-time slot.
        self.jobs: dict[str, JobLifecycle] = {}
        self.job_slot = asyncio.Semaphore(1)

    def _register_configured(self) -> list[str]:
        ids = []
        first: str | None = None
        for item in self.settings.models:
            mid, path = control.parse_assignment(item)
            spec = control.register(self.catalog, mid, path, None)
            first = first or spec.id
            ids.append(spec.id)
        for item in self.settings.adapters:
            name, path = control.parse_assignment(item)
            spec = control.register(self.catalog, name, first if not path.startswith("run:") else None, path)
            ids.append(spec.id)
        return ids

    async def setup(self) -> None:
        loop = asyncio.get_running_loop()
        self.engine.on_model_event = lambda kind, mid, info: loop.call_soon_threadsafe(self._publish, kind, mid, info)
        ids = self._register_configured()
        self.engine.start()
        if self.settings.preload:
            for mid in ids:
                await self.engine.call(self.engine.ensure_loaded, mid)
        await self._start_http()
        # Importing optional backends (llama.cpp, mlx) can take seconds: probe once, off the loop.
        self.backends = await asyncio.get_running_loop().run_in_executor(None, control.usable_backends)
        await self.endpoint("load", functools.partial(handlers.load, self), ServeLoadRequest)
        await self.endpoint("unload", functools.partial(handlers.unload, self), ServeUnloadRequest)
        await self.endpoint("list", functools.partial(handlers.list_models, self), ServeListRequest)
        await self.endpoint("info", functools.partial(handlers.info, self), ServeInfoRequest)
        await self.endpoint("convert-formats", functools.partial(handlers.convert_formats, self), ConvertFormatsRequest)
        await self.endpoint("cancel", functools.partial(handlers.cancel, self), JobRef)
        for job_type in subjects.SERVE_JOB_TYPES:
            await self.track(await self.bus.consume_jobs(
                subjects.job("serve", job_type), subjects.job_consumer_name("serve", job_type),
                functools.partial(handlers.run_job, self), JobEnvelope,
                ack_wait_s=self.settings.job_ack_wait_s, max_deliver=self.settings.job_max_deliver))

    async def _start_http(self) -> None:
        app = create_app(AppState(self.engine, self.registry, self.metrics, self.settings.retry_after_s,
                                  self.version))
        config = uvicorn.Config(app, host=self.settings.host, port=self.settings.port, log_level="warning",
                                lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self._server_task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._server_task.done():
                self._server_task.result()  # re-raise why it could not start (port in use…)
                raise RuntimeError("serve HTTP server exited at start")
            await asyncio.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = self.settings.public_url or f"http://{self.settings.host}:{port}"
        log.info("serve HTTP API at %s/v1", self.url)

    def _publish(self, kind: str, model_id: str, info: dict[str, Any]) -> None:
        spec = self.catalog.get(model_id)
        msg = ServeModelEvent(id=model_id, action=kind,  # type: ignore[arg-type]
                              backend=info.get("backend") or (spec.backend if spec else None),
                              format=info.get("format") or (spec.format if spec else None),
                              base=info.get("base"), reason=info.get("reason"),
                              memory_bytes=info.get("memory_bytes"), load_seconds=info.get("load_seconds"))
        subject = subjects.event("serve", "model", event_token(model_id), kind)
        task = asyncio.create_task(self.bus.publish_event(subject, msg))
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    def checks(self) -> dict[str, str]:
        # Health is served before setup() ends: report "starting" until the HTTP API is up.
        return {"http": "ok" if self.url else "starting"}

    async def health(self, req: Any) -> Any:
        reply = await super().health(req)
        stats = self.engine.stats()
        return reply.model_copy(update={"details": {"url": self.url, "models": stats["loaded"],
                                                    "running": stats["running"], "waiting": stats["waiting"]}})

    async def drain(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self._server_task is not None:
            with contextlib.suppress(Exception):
                await self._server_task
        await asyncio.get_running_loop().run_in_executor(None, self.engine.shutdown)
        if self._events:
            await asyncio.gather(*self._events, return_exceptions=True)
