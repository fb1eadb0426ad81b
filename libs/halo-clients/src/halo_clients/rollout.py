"""Typed client of the rollout service::

    from halo_clients import RolloutClient

    rollout = RolloutClient(bus)
    result = await rollout.generate(RolloutRequest(model="tiny://llama", requests=[...]))
    loaded = await rollout.load(RolloutLoadRequest(model=path, reload=True))

Sampling (and a first model load) takes longer than a control-plane RPC: ``timeout`` defaults to ten minutes.
Large batches are jobs: ``JobsClient(bus).submit(await jobs.route("generate"), RolloutJobSpec(...))``.
"""

from __future__ import annotations

from halo_bus import Bus, subjects
from halo_schemas.rollout import RolloutLoaded, RolloutLoadRequest, RolloutRequest, RolloutResult


class RolloutClient:
    def __init__(self, bus: Bus, timeout: float = 600.0) -> None:
        self.bus, self.timeout = bus, timeout

    async def generate(self, req: RolloutRequest) -> RolloutResult:
        """``n`` completions per prompt, with the weights version that produced them."""
        return await self.bus.request(subjects.ROLLOUT_GENERATE, req, RolloutResult, timeout=self.timeout)

    async def load(self, req: RolloutLoadRequest) -> RolloutLoaded:
        """Load a model (+ adapter) into the rollout cache, or re-read its weights (``reload``)."""
        return await self.bus.request(subjects.ROLLOUT_LOAD, req, RolloutLoaded, timeout=self.timeout)
