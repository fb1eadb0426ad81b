"""Typed client of a trainer's RPCs (trainer-torch today; trainer-mlx serves the same verbs)::

    from halo_clients import TrainerClient

    preview = await TrainerClient(bus).preview("sft", spec, num_samples=2)

Submitting, listing and cancelling training jobs go through :class:`halo_clients.jobs.JobsClient`.
"""

from __future__ import annotations

from halo_bus import Bus, subjects
from halo_schemas.base import UserInput
from halo_schemas.training import PreviewRequest, PreviewResult


class TrainerClient:
    def __init__(self, bus: Bus, service: str = "trainer-torch", timeout: float = 120.0) -> None:
        # A preview may build a tokenizer and read a large data file: longer than a control-plane RPC.
        self.bus, self.service, self.timeout = bus, service, timeout

    async def preview(self, method: str, spec: UserInput, num_samples: int = 1) -> PreviewResult:
        """Dry run: data validation, resolved settings and rendered samples (trained vs masked), no training."""
        req = PreviewRequest(method=method, spec=spec.model_dump(mode="json"), num_samples=num_samples)
        return await self.bus.request(subjects.rpc(self.service, "preview"), req, PreviewResult, timeout=self.timeout)
