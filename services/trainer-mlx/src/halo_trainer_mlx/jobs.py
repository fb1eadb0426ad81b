"""The bridge between a job delivery and :func:`halo_trainer_mlx.core.runner.run_job`: the shared trainer machinery
(:mod:`halo_training.jobs`) runs it in a worker thread and publishes what it reports."""

from __future__ import annotations

from collections.abc import Callable

from halo_schemas.training import TrainingSummary, TrainSpecBase
from halo_training.jobs import TrainingJobExecution

from halo_trainer_mlx.core.runner import run_job


def train_delivery(execution: TrainingJobExecution, guard: Callable[[TrainSpecBase], None]) -> TrainingSummary:
    """Train the delivered job on MLX (worker thread); raises Preempted after writing a checkpoint."""
    env = execution.env
    return run_job(env.job_type, env.spec, execution.run_dir, reporter=execution.reporter,
                   control=execution.control, run_id=env.run_id, job_id=env.job_id, attempt=execution.attempt,
                   guard=guard)
