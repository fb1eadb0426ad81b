"""Typed client of the serve service (model control and convert/merge jobs) over the bus::

    from halo_clients import ServeClient

    serve = ServeClient(bus)
    model = await serve.load(ServeLoadRequest(id="tiny", model="/models/tiny"))
    models = await serve.list()
    await serve.unload("tiny", forget=True)
    info = await serve.info()                 # where the OpenAI HTTP API listens (the gateway proxies /v1 there)
    formats = await serve.convert_formats()   # format -> quant -> None (available) or why not, on serve's host

    submitted = await serve.submit_convert(ConvertSpec(source="/models/tiny", format="gguf", quant="q8"))

Every method is one request/reply on a ``halo.rpc.serve.*`` subject (or a job on ``halo.job.serve.*``);
errors arrive as serve raised them (NotFound, BadRequest…), an absent serve as Unavailable.
"""

from __future__ import annotations

from halo_bus import Bus, subjects
from halo_schemas.convert import ConvertFormats, ConvertFormatsRequest, ConvertSpec, MergeBakeSpec, MergeCombineSpec
from halo_schemas.jobs import JobSubmitted
from halo_schemas.serve import (
    ServeInfo,
    ServeInfoRequest,
    ServeListRequest,
    ServeLoadRequest,
    ServeModel,
    ServeModelList,
    ServeUnloadRequest,
)

from halo_clients.jobs import JobsClient, choose_route

#: A load reads weights from disk (and may compile): longer than a control-plane RPC.
LOAD_TIMEOUT_S = 600.0


class ServeClient:
    """Async client over a :class:`~halo_bus.Bus`; ``timeout`` bounds each control request."""

    def __init__(self, bus: Bus, timeout: float = 10.0, load_timeout: float = LOAD_TIMEOUT_S) -> None:
        self.bus, self.timeout, self.load_timeout = bus, timeout, load_timeout

    async def load(self, req: ServeLoadRequest) -> ServeModel:
        """Register a model id (and load it now unless ``req.load`` is False)."""
        return await self.bus.request(subjects.SERVE_LOAD, req, ServeModel, self.load_timeout)

    async def unload(self, model_id: str, forget: bool = False) -> ServeModelList:
        req = ServeUnloadRequest(id=model_id, forget=forget)
        return await self.bus.request(subjects.SERVE_UNLOAD, req, ServeModelList, self.load_timeout)

    async def list(self) -> ServeModelList:
        return await self.bus.request(subjects.SERVE_LIST, ServeListRequest(), ServeModelList, self.timeout)

    async def info(self) -> ServeInfo:
        return await self.bus.request(subjects.SERVE_INFO, ServeInfoRequest(), ServeInfo, self.timeout)

    async def convert_formats(self) -> ConvertFormats:
        """What serve's host can export and verify (llama.cpp / mlx-lm installed or not)."""
        return await self.bus.request(subjects.SERVE_CONVERT_FORMATS, ConvertFormatsRequest(), ConvertFormats,
                                      self.timeout)

    async def submit_convert(self, spec: ConvertSpec) -> JobSubmitted:
        return await JobsClient(self.bus, self.timeout).submit(choose_route("convert"), spec)

    async def submit_bake(self, spec: MergeBakeSpec) -> JobSubmitted:
        return await JobsClient(self.bus, self.timeout).submit(choose_route("merge-bake"), spec)

    async def submit_combine(self, spec: MergeCombineSpec) -> JobSubmitted:
        return await JobsClient(self.bus, self.timeout).submit(choose_route("merge-combine"), spec)
