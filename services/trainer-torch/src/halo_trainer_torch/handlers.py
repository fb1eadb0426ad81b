"""trainer-torch's own handlers. Deliveries, admission, cancel and the SIGTERM drain are the shared
:class:`halo_training.jobs.TrainerService`; what is trainer-torch's is how a job trains and how a dry run previews,
both under this worker's own code-execution policy (``svc.guard``), whatever the gateway decided."""

from __future__ import annotations

from typing import TYPE_CHECKING

from halo_schemas.training import PreviewRequest, PreviewResult, TrainingSummary
from halo_training.jobs import TrainingJobExecution

from halo_trainer_torch.core.preview import preview_job
from halo_trainer_torch.jobs import run_execution

if TYPE_CHECKING:
    from halo_trainer_torch.service import TrainerTorch


def train(svc: TrainerTorch, execution: TrainingJobExecution) -> TrainingSummary:
    """Run one delivery of a training job (in the worker thread the shared service gives it)."""
    return run_execution(execution, svc.guard)


def preview(svc: TrainerTorch, req: PreviewRequest) -> PreviewResult:
    """Dry run: data validation, resolved settings and rendered samples, no training."""
    return preview_job(req.method, req.spec, req.num_samples, svc.guard)
