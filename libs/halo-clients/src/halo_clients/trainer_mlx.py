"""Typed client of trainer-mlx's RPCs (the same verbs as trainer-torch's)::

    from halo_clients.trainer_mlx import TrainerMlxClient

    preview = await TrainerMlxClient(bus).preview("sft", spec, num_samples=2)   # refusals MLX makes are problems
    status = await TrainerMlxClient(bus).cancel(job_id)

Submitting a job goes through :class:`halo_clients.jobs.JobsClient` (``backend="mlx"`` routes to trainer-mlx).
"""

from __future__ import annotations

from halo_bus import Bus, subjects
from halo_schemas.jobs import JobRef, JobStatus

from halo_clients.trainer_torch import TrainerClient

SERVICE = "trainer-mlx"


class TrainerMlxClient(TrainerClient):
    """:class:`~halo_clients.trainer_torch.TrainerClient` bound to trainer-mlx, plus ``cancel``."""

    def __init__(self, bus: Bus, timeout: float = 120.0) -> None:
        super().__init__(bus, service=SERVICE, timeout=timeout)

    async def cancel(self, job_id: str) -> JobStatus:
        """Ask trainer-mlx to stop a job it runs (or will run): the status with ``cancel_requested``."""
        return await self.bus.request(subjects.rpc(SERVICE, "cancel"), JobRef(job_id=job_id), JobStatus,
                                      timeout=min(self.timeout, 10.0))
