"""The gateway process: a bus service (so it is discoverable and has health) that also runs the
FastAPI app under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from halo_runtime import Service

from halo_gateway import __version__
from halo_gateway.app import create_app
from halo_gateway.settings import GatewaySettings

log = logging.getLogger("halo_gateway")


class Gateway(Service):
    name = "gateway"
    version = __version__
    description = "HTTP edge of Halo Forge"
    settings_cls = GatewaySettings

    async def setup(self) -> None:
        settings: GatewaySettings = self.settings  # type: ignore[assignment]
        registry = self.telemetry.registry if self.telemetry else None
        app = create_app(self.bus, settings, registry)
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self._serve_task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._serve_task.done():
                self._serve_task.result()  # raises the bind error
            await asyncio.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        security = app.state.security
        log.info("gateway listening on http://%s:%d (%s; tokens %s)", settings.host, port,
                 "exposed" if security.exposed else "loopback only",
                 "required" if security.auth_required() else "not required until one exists")

    async def drain(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await self._serve_task
