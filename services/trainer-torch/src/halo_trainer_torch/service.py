"""The trainer-torch service: consumes ``halo.job.trainer-torch.<method>`` and serves cancel and preview.

Run it with ``python -m halo_trainer_torch``. Deliveries, cancel, preview and the SIGTERM drain are the shared
:class:`halo_training.jobs.TrainerService`: each delivery runs in a worker thread, at most
``max_concurrent_jobs`` at once; on SIGTERM running jobs stop after the current step with a checkpoint and stay
queued; a trainer that dies outright stops heartbeating and its job resumes elsewhere after ``ack_wait_s``.
"""

from __future__ import annotations

from typing import Any

from halo_common.backend import detect_backend
from halo_schemas.training import PreviewRequest, PreviewResult, TrainingSummary
from halo_training.jobs import TrainerService, TrainingJobExecution

from halo_trainer_torch import __version__, handlers
from halo_trainer_torch.core.policy import spec_guard
from halo_trainer_torch.settings import TrainerTorchSettings

METHODS = ("sft", "dpo", "orpo", "rm", "grpo", "raft")


class TrainerTorch(TrainerService):
    name = "trainer-torch"
    version = __version__
    description = "SFT, DPO, ORPO and reward-model training on torch backends"
    settings_cls = TrainerTorchSettings
    methods = METHODS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = spec_guard(self.settings)  # this worker's own policy, whatever the gateway decided

    def checks(self) -> dict[str, str]:
        return {"backend": "ok" if detect_backend() != "mlx" else "mlx: use trainer-mlx"}

    def train(self, execution: TrainingJobExecution) -> TrainingSummary:
        return handlers.train(self, execution)

    def preview(self, req: PreviewRequest) -> PreviewResult:
        return handlers.preview(self, req)
